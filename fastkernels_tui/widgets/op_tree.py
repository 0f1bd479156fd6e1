"""The operator tree: model -> level -> operators, each with a live status badge and its best
speedup. Highlighting an operator posts `OpTree.OpChosen`; `cursor_op` is the operator under the
cursor at once (keys typed ahead are handled before that message arrives)."""

from __future__ import annotations

from rich.text import Text
from textual.message import Message
from textual.widgets import Tree
from textual.widgets.tree import TreeNode

from fastkernels.registry.tasks import LEVEL_NAMES
from fastkernels_tui.views import OpView

STATUS_STYLE = {
    "generating": "bold $warning", "validating": "$warning", "invalid": "$error", "failed": "$error",
    "correct": "$success", "valid": "$secondary", "pending review": "bold $accent", "approved": "bold $success",
    "rejected": "dim", "blamed": "bold $error", "pending": "dim",
}


class OpTree(Tree[str]):
    DEFAULT_CSS = ""

    class OpChosen(Message):
        def __init__(self, op: str) -> None:
            super().__init__()
            self.op = op

    def __init__(self, **kw) -> None:
        super().__init__("operators", **kw)
        self.show_root = True
        self.border_title = "operators"
        self.border_subtitle = "esc returns here"
        self._op_nodes: dict[str, TreeNode[str]] = {}
        self._level_node: TreeNode[str] | None = None

    def set_model(self, title: str, level: int, views: list[OpView]) -> None:
        self.clear()
        self.root.set_label(Text(title, style="bold"))
        self._level_node = self.root.add(f"L{level} · {LEVEL_NAMES.get(level, '')}", expand=True)
        self._op_nodes = {}
        self._width = max((len(v.name) for v in views), default=0)
        for v in views:
            self._op_nodes[v.name] = self._level_node.add_leaf(self._label(v), data=v.name)
        self.root.expand()

    def _label(self, view: OpView) -> Text:
        mark, word = view.badge
        text = Text()
        text.append(f"{mark} ", style=self._style(view.status))
        text.append(view.name.ljust(getattr(self, "_width", 0)))
        if view.status == "generating" and view.attempt:
            word = f"{word} #{view.attempt}"
        text.append(f" {word}", style=self._style(view.status))
        if view.best_speedup:
            text.append(f" {view.best_speedup:.2f}×", style="bold")
        return text

    def _style(self, status: str) -> str:
        spec = STATUS_STYLE.get(status, "")
        parts = []
        for tok in spec.split():
            if tok.startswith("$"):
                parts.append(self.app.theme_variables.get(tok[1:], ""))
            else:
                parts.append(tok)
        return " ".join(p for p in parts if p)

    def update_op(self, view: OpView) -> None:
        node = self._op_nodes.get(view.name)
        if node is not None:
            node.set_label(self._label(view))

    def select_op(self, op: str) -> None:
        node = self._op_nodes.get(op)
        if node is not None:
            self._tree_lines  # noqa: B018  (builds the line table: a new node has no line before it)
            self.move_cursor(node)

    @property
    def cursor_op(self) -> str | None:
        """The operator under the cursor now (the highlight message about it may still be queued)."""
        node = self.cursor_node
        return node.data if node is not None and node.data else None

    def on_tree_node_highlighted(self, event: Tree.NodeHighlighted) -> None:
        if event.node.data:
            self.post_message(self.OpChosen(event.node.data))
