"""A network reply that restarts (dropped stream, 529) voids the text already shown."""

from fastkernels import events as ev
from fastkernels_tui.views import OpView, apply_event


def test_stream_reset_drops_the_discarded_text():
    view = OpView(name="rms_norm")
    view.add(apply_event(view, ev.GenerationStarted(op="rms_norm", attempt=1, backend="anthropic:x"), 0.0))
    header = view.stream_text()
    for piece in ("```python\nimport tor", "ch\nclass RMS"):
        view.add(piece)
    line = apply_event(view, ev.StreamReset(op="rms_norm", attempt=1, reason="stream dropped", discarded_chars=30), 1.0)
    view.add(line)
    view.add("```python\nimport torch\n")
    text = view.stream_text()
    assert text.startswith(header)
    assert "class RMS" not in text and "import tor\n" not in text.replace("import torch", "")
    assert "reply restarted (stream dropped)" in text
    assert text.endswith("```python\nimport torch\n")
