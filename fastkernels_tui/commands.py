"""The command palette's cockpit commands (ctrl+p): every action, searchable by name."""

from __future__ import annotations

from functools import partial

from textual.command import DiscoveryHit, Hit, Hits, Provider

COMMANDS = (
    ("Generate all operators", "run_all", "generate, validate and unit-test every operator, then e2e"),
    ("Regenerate the selected operator", "regenerate", "a new attempt, with any steering note"),
    ("Approve the selected kernel", "approve", "it enters the end-to-end benchmark"),
    ("Reject the selected kernel", "reject", "it stays out of the end-to-end benchmark"),
    ("Steer the next attempt", "steer", "type an instruction for the next attempt"),
    ("Run the end-to-end benchmark", "bench", "patch the approved kernels into the model"),
    ("Show the diff", "show_tab('diff')", "baseline or previous attempt vs candidate"),
    ("Toggle side by side / unified diff", "diff_split", ""),
    ("Diff against the previous attempt / baseline", "diff_against", ""),
    ("Edit the selected kernel", "show_tab('editor')", "ctrl+s saves and re-checks"),
    ("Show unit results", "show_tab('unit')", "per shape, with the speedup chart"),
    ("Next theme", "next_theme", "cycle the fastkernels themes (remembered)"),
    ("Setup: model, level, backend", "setup", ""),
    ("History of past runs", "history", ""),
    ("Help and keys", "help", ""),
    ("Quit", "quit", "asks first while work is running"),
)


class CockpitCommands(Provider):
    def _run(self, action: str) -> None:
        self.app.call_later(self.app.run_action, action)

    async def discover(self) -> Hits:
        for name, action, help_text in COMMANDS:
            yield DiscoveryHit(name, partial(self._run, action), help=help_text or None)

    async def search(self, query: str) -> Hits:
        matcher = self.matcher(query)
        for name, action, help_text in COMMANDS:
            score = matcher.match(name)
            if score > 0:
                yield Hit(score, matcher.highlight(name), partial(self._run, action), help=help_text or None)
