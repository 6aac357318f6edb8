"""Tables split by vocabulary rows over ranks (dim-0 DTensor shards, as --fsdp leaves the
input embedding and the lm_head) give what the whole tables give:

- the distillation loss: per rank the same loss, statistics and hidden-state gradients, and
  the weight gradient's rows equal to the ranks' averaged whole gradients (what data
  parallelism applies);
- the input embedding lookup: the same embeddings and the same averaged gradient, none for
  the padding id.

Gloo processes on CPU; vocab sizes that do not divide by the number of ranks; ranks with
different numbers of tokens (so a rank runs padded chunks, or chunks with no token of its own)."""

from __future__ import annotations

import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from workbench.distill.losses import DenseTeacher, LossSpec, SparseTeacher, distill_loss, sparse_from_logprobs

HIDDEN = 8
SUPERVISED = (11, 4, 0)  # per rank (a third rank has none)
CASES = {
    "reverse_kl": (LossSpec(chunk_size=3), "dense"),
    "forward_kl, alpha 0.5, T 2": (LossSpec(loss="forward_kl", alpha=0.5, temperature=2.0, chunk_size=4), "dense"),
    "jsd 0.3": (LossSpec(loss="jsd", beta=0.3, chunk_size=5), "dense"),
    "teacher top-3": (LossSpec(teacher_top_k=3, chunk_size=3), "dense"),
    "teacher with a larger vocab": (LossSpec(loss="forward_kl", chunk_size=2), "dense-larger"),
    "cached teacher": (LossSpec(alpha=0.7, chunk_size=3), "cached"),
    "auto chunk": (LossSpec(), "dense"),
}


def rank_inputs(rank: int, vocab: int, teacher_vocab: int):
    """This rank's supervised hidden states, labels (with ignored positions) and teacher hidden
    states; the weights are the same on every rank."""
    g = torch.Generator().manual_seed(100 + rank)
    tokens = SUPERVISED[rank] + 3
    labels = torch.randint(0, vocab, (tokens,), generator=g)
    labels[torch.randperm(tokens, generator=g)[:3]] = -100
    hidden = torch.randn(tokens, HIDDEN, generator=g)
    teacher_hidden = torch.randn(tokens, HIDDEN, generator=g)
    weights = torch.Generator().manual_seed(7)
    student_weight = torch.randn(vocab, HIDDEN, generator=weights)
    teacher_weight = torch.randn(teacher_vocab, HIDDEN, generator=weights)
    return hidden, labels, teacher_hidden, student_weight, teacher_weight


def cached_teacher(teacher_hidden, teacher_weight, labels, spec):
    supervised = teacher_hidden[labels != -100]
    logp = torch.log_softmax(supervised @ teacher_weight.T / spec.temperature, dim=1)
    return sparse_from_logprobs(logp, 4)


def run_case(rank: int, ranks: int, vocab: int, spec: LossSpec, teacher_kind: str) -> list[str]:
    """Both ways on this rank; the differences found, as messages."""
    from torch.distributed.tensor import Shard, distribute_tensor

    mesh = dist.device_mesh.init_device_mesh("cpu", (ranks,))
    teacher_vocab = vocab + 5 if teacher_kind == "dense-larger" else vocab
    hidden, labels, teacher_hidden, student_weight, teacher_weight = rank_inputs(rank, vocab, teacher_vocab)
    scale = ranks / 7.0  # the loop scales each rank's loss by ranks / global supervised tokens

    def teacher_for(weight):
        if teacher_kind == "cached":
            return cached_teacher(teacher_hidden, teacher_weight, labels, spec)
        return DenseTeacher(teacher_hidden, weight)

    whole_hidden = hidden.clone().requires_grad_()
    whole_weight = student_weight.clone().requires_grad_()
    whole_loss, whole_stats = distill_loss(whole_hidden, whole_weight, teacher_for(teacher_weight), labels, spec)
    (whole_loss * scale).backward()
    averaged = whole_weight.grad.clone()
    dist.all_reduce(averaged)
    averaged /= ranks

    sharded_hidden = hidden.clone().requires_grad_()
    sharded_weight = torch.nn.Parameter(distribute_tensor(student_weight, mesh, [Shard(0)]))
    sharded_teacher = distribute_tensor(teacher_weight, mesh, [Shard(0)])
    loss, stats = distill_loss(sharded_hidden, sharded_weight, teacher_for(sharded_teacher), labels, spec)
    (loss * scale).backward()

    problems = []
    if not torch.allclose(loss, whole_loss, rtol=1e-5, atol=1e-5):
        problems.append(f"loss {loss.item()} vs {whole_loss.item()}")
    for field, got, expected in zip(stats._fields, stats, whole_stats):
        if abs(got - expected) > 1e-4 * max(1.0, abs(expected)):
            problems.append(f"{field} {got} vs {expected}")
    if not torch.allclose(sharded_hidden.grad, whole_hidden.grad, atol=1e-5):
        problems.append(f"hidden grad off by {(sharded_hidden.grad - whole_hidden.grad).abs().max().item()}")
    weight_grad = sharded_weight.grad.full_tensor()
    if not torch.allclose(weight_grad, averaged, atol=1e-5):
        problems.append(f"weight grad off by {(weight_grad - averaged).abs().max().item()}")
    return problems


def lookup_problems(rank: int, ranks: int, vocab: int) -> list[str]:
    """The sharded embedding against nn.Embedding, with the padding id among the tokens."""
    from workbench.training.sharded_embedding import ShardedEmbedding

    mesh = dist.device_mesh.init_device_mesh("cpu", (ranks,))
    whole = torch.nn.Embedding(vocab, HIDDEN, padding_idx=1)
    with torch.no_grad():
        whole.weight.copy_(torch.randn(vocab, HIDDEN, generator=torch.Generator().manual_seed(3)))
    g = torch.Generator().manual_seed(200 + rank)
    ids = torch.randint(0, vocab, (2, 3 + 2 * rank), generator=g)  # another shape on every rank
    ids[0, 0] = 1
    upstream = torch.randn(*ids.shape, HIDDEN, generator=g)
    (whole(ids) * upstream).sum().backward()
    averaged = whole.weight.grad.clone()
    dist.all_reduce(averaged)
    averaged /= ranks

    sharded = ShardedEmbedding.replacing(whole, mesh)
    got = sharded(ids)
    (got * upstream).sum().backward()
    problems = []
    if not torch.equal(got, whole(ids)):
        problems.append("embeddings differ")
    grad = sharded.weight.grad.full_tensor()
    if not torch.allclose(grad, averaged, atol=1e-6):
        problems.append(f"weight grad off by {(grad - averaged).abs().max().item()}")
    if grad[1].abs().max() != 0:
        problems.append("the padding id's row got a gradient")
    return problems


def worker(rank: int, ranks: int, port: int, vocab: int, results) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=ranks)
    try:
        found = {}
        for name, (spec, teacher_kind) in CASES.items():
            found[name] = run_case(rank, ranks, vocab, spec, teacher_kind)
        found["embedding lookup"] = lookup_problems(rank, ranks, vocab)
        results[rank] = found
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("ranks, vocab", [(2, 37), (3, 7)])  # 19 + 18 rows; 3 + 3 + 1
def test_vocab_sharded_loss_and_lookup_equal_the_whole_tables(ranks, vocab):
    from tests.test_fsdp import free_port

    with mp.Manager() as manager:
        results = manager.dict()
        mp.spawn(worker, args=(ranks, free_port(), vocab, results), nprocs=ranks)
        found = dict(results)
    assert sorted(found) == list(range(ranks))
    for rank, cases in found.items():
        assert sorted(cases) == sorted([*CASES, "embedding lookup"])
        for name, problems in cases.items():
            assert not problems, f"rank {rank}, {name}: {problems}"


@pytest.mark.parametrize("options", [{"max_norm": 1.0}, {"scale_grad_by_freq": True}, {"sparse": True}])
def test_an_embedding_the_sharded_lookup_cannot_reproduce_is_refused_before_sharding(options):
    from workbench.errors import ConfigError
    from workbench.training.fsdp import shard_embeddings_apart
    from workbench.training.sharded_embedding import ShardedEmbedding

    with pytest.raises(ValueError, match="supports neither max_norm, scale_grad_by_freq nor sparse"):
        ShardedEmbedding.replacing(torch.nn.Embedding(7, HIDDEN, **options), mesh=None)

    class Model(torch.nn.Module):  # what shard_embeddings_apart reads of a causal LM
        config = type("Config", (), {"model_type": "toy"})()

        def __init__(self):
            super().__init__()
            self.embedding, self.head = torch.nn.Embedding(7, HIDDEN, **options), torch.nn.Linear(HIDDEN, 7)

        def get_input_embeddings(self):
            return self.embedding

        def get_output_embeddings(self):
            return self.head

    model = Model()
    embedding = model.embedding
    with pytest.raises(ConfigError, match="^toy: a sharded input embedding supports neither"):
        shard_embeddings_apart(model, mesh=None)
    assert model.get_input_embeddings() is embedding  # nothing replaced
