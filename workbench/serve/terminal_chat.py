"""`workbench chat`: a conversation in the terminal, through the same batcher the server uses."""

from __future__ import annotations

import threading

import click

from workbench.errors import CheckpointError, ConfigError
from workbench.serve.batcher import Answer, Batcher, GenerationRequest
from workbench.serve.sampling import Sampling

HELP = "commands: /reset, /system TEXT, /exit; Ctrl-C stops an answer"


class TerminalChat:
    def __init__(self, checkpoint: str, *, system: str | None, max_new_tokens: int, temperature: float,
                 seed: int):
        from workbench.modeling import load_model, load_tokenizer

        if max_new_tokens < 1:
            raise ConfigError(f"--max-new-tokens must be at least 1, got {max_new_tokens}")
        if temperature < 0:
            raise ConfigError(f"--temperature must be >= 0, got {temperature}")
        self.tokenizer = load_tokenizer(checkpoint)
        if not self.tokenizer.chat_template:
            raise CheckpointError(f"{checkpoint}: the tokenizer has no chat template, so there is no chat "
                                  "format to follow; use `workbench generate`")
        self.model = load_model(checkpoint)
        self.context = getattr(self.model.config.get_text_config(), "max_position_embeddings", None)
        self.max_new_tokens = max_new_tokens
        self.temperature = temperature
        self.seed = seed
        self.system = system
        self.messages: list[dict] = []
        self.turns = 0

    def run(self) -> None:
        self.batcher = Batcher(self.model, self.tokenizer, max_rows=1, name="chat")
        click.echo(HELP, err=True)
        try:
            while True:
                try:
                    line = input("you> ")
                except EOFError:
                    click.echo()
                    return
                if not self.handle(line.strip()):
                    return
        finally:
            self.batcher.stop()

    def handle(self, line: str) -> bool:
        """One input line: a command or a user turn; False to quit."""
        if line in ("/exit", "/quit"):
            return False
        if line == "/reset":
            self.messages = []
            click.echo("(conversation reset)", err=True)
        elif line == "/system" or line.startswith("/system "):
            self.system = line[len("/system"):].strip() or None
            self.messages = []
            click.echo(f"(system message {'set' if self.system else 'cleared'}; conversation reset)", err=True)
        elif line.startswith("/"):
            click.echo(f"(unknown command {line.split()[0]}; {HELP})", err=True)
        elif line:
            self.answer(line)
        return True

    def answer(self, text: str) -> None:
        from workbench import modeling

        system = [{"role": "system", "content": self.system}] if self.system else []
        messages = [*system, *self.messages, {"role": "user", "content": text}]
        prompt_ids = modeling.prompt_ids(self.tokenizer, messages)
        budget = self.max_new_tokens
        if self.context is not None:
            budget = min(budget, self.context - len(prompt_ids))
        if budget < 1:
            click.echo(f"(the conversation fills the model's context of {self.context} tokens; /reset)", err=True)
            return
        done = threading.Event()
        result: list[Answer] = []
        request = GenerationRequest(
            prompt_ids, budget, Sampling(self.temperature, 1.0, self.seed + self.turns),
            on_text=lambda delta: click.echo(delta, nl=False),
            on_done=lambda answer: (result.append(answer), done.set()),
        )
        self.batcher.submit(request)
        try:
            while not done.wait(0.1):
                pass
        except KeyboardInterrupt:
            request.cancel()
            done.wait()
        click.echo()
        answer = result[0]
        if answer.finish_reason == "error":
            click.echo(f"(generation failed: {answer.error})", err=True)
            return
        if answer.finish_reason == "length":
            click.echo(f"(cut at {budget} tokens)", err=True)
        self.turns += 1
        self.messages += [{"role": "user", "content": text}, {"role": "assistant", "content": answer.text}]
