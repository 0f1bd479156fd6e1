"""End-to-end benchmark: patch the candidate kernels into the model, check every operator where it
runs, measure token match and speedup against the baseline model.

(Just over 500 lines: the parent side, the typed report with its statistics and its rendering.)

`run_benchmark(model_id, level, candidates)` runs the whole measurement in a sandboxed child (the
candidates are untrusted code; what runs there is fastkernels.measure.e2e_child) and returns a
typed `E2EReport`. This module is the parent side, the report and its statistics. In the child, the model is loaded
once (real weights from disk, or seeded random ones: the report says which) and then:

1. baseline, eager, in the model's dtype: greedy generation and teacher-forced logits over
   prompt + the baseline's own continuation;
2. the noise floor: the same baseline with fp32 parameters, compared with (1) exactly as the
   patched model will be. On random weights a deep model amplifies rounding chaotically (Llama-3.1-8B
   bf16 vs fp32: 31% top-1 agreement), so a model-level figure means something only beside it;
3. per candidate set: patch (fastkernels.registry.patching), shadow check at the prefill and at
   decode steps (every patched operator also runs its baseline on clones of the same activations;
   failures name operator and layer), then greedy generation and teacher-forced logits as in (1);
4. on a GPU, the baseline compiled (HF generate with a static cache, which compiles its forward).

Timing: every figure is the median of several timed generations (TIMING_REPS), each after the same
generation run untimed as its warm-up, with the min and max beside it. The unpatched baseline is timed in the same rounds
as each patched set, alternating who goes first (AB, BA, ...), and the speedup is the median of the
per-round ratios, with their spread: a first run that pays for warm-up, or a machine whose speed
drifts, no longer shows up as a speedup (the baseline files bound as candidates once read 1.64x
against a single cold baseline run). The timed runs use the attention a user's model runs by
default (SDPA), for the baseline and the patched model alike; the correctness runs (token match,
logits, noise floor, shadow check) keep the loaded model's eager attention, the reference math the
baselines are written against. The baseline with eager attention is timed beside it for reference.

Pass = shadow check passes, no NaN/Inf, and the mean relative logit error within NOISE_MULTIPLE of
the noise floor's. When the patched run raises, hangs, crashes or produces NaN/Inf, the culprits are
found by re-running subsets of the candidates in fresh sandboxed children (bisection) and reported
(`blamed`: op -> reason), with a KernelBlamed event each. Shadow-check failures are blamed too.
"""

from __future__ import annotations

import json
import os
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Mapping

from fastkernels import events as ev
from fastkernels.errors import UsageError

# The patched model's mean relative logit error may be at most this multiple of the noise floor's
# (bf16 vs fp32 baseline). Measured on Llama-3.1-8B shapes (H100, random weights, 512 tokens):
# correct Liger kernels 0.063 against a floor of 0.44 (0.14x); dropped norm weight or eps x100
# 1.06-1.37 (2.4x-3.1x). A subtly wrong kernel hides below the floor: the shadow check catches it.
NOISE_MULTIPLE = 2.0
# Below this relative logit error two models agree whatever the floor (the floor of a tiny model
# in fp32 can be ~1e-7; a correct kernel that reorders a sum is not 2x that).
ABS_ERROR_FLOOR = 1e-3
SHADOW_DECODE_STEPS = 2
CPU_TIMING_NOTE = "CPU run: timings are not meaningful (Triton kernels run under the interpreter)"


@dataclass
class Timing:
    """Medians over `reps` timed generations, each after its own warm-up, with the spread beside
    them (min/max): a speedup inside the spread is noise."""

    prefill_ms: float | None = None
    decode_tok_s: float | None = None
    note: str = ""
    prefill_ms_min: float | None = None
    prefill_ms_max: float | None = None
    decode_tok_s_min: float | None = None
    decode_tok_s_max: float | None = None
    reps: int = 0
    attention: str = ""  # the attention implementation the timed runs used

    @classmethod
    def of(cls, runs: list[tuple[float, float]], note: str = "", attention: str = "") -> "Timing":
        """From (prefill_ms, decode_tok_s) of each timed run."""
        if not runs:
            return cls(note=note, attention=attention)
        pre = [p for p, _ in runs]
        tok = [t for _, t in runs]
        return cls(prefill_ms=_median(pre), decode_tok_s=_median(tok), note=note, prefill_ms_min=min(pre),
                   prefill_ms_max=max(pre), decode_tok_s_min=min(tok), decode_tok_s_max=max(tok),
                   reps=len(runs), attention=attention)


def _median(xs) -> float:
    xs = sorted(xs)
    n = len(xs)
    return xs[n // 2] if n % 2 else 0.5 * (xs[n // 2 - 1] + xs[n // 2])


def rotations(names: list[str], rounds: int) -> list[list[str]]:
    """Who goes first in each round: AB, BA, AB, ... (each subject first equally often), so a drift
    of the machine during the measurement lands on every subject alike."""
    k = len(names)
    return [names[r % k:] + names[:r % k] for r in range(rounds)]


def bracketed(subjects: Mapping[str, Callable[[], object]], reps: int, *, deadline: float | None = None,
              min_reps: int = 2, clock: Callable[[], float] = time.monotonic) -> dict[str, list]:
    """Call each subject's measurement `reps` times, interleaved in rotating order; returns
    {name: [result of each call, in order]}. A subject warms itself up inside its call. Past
    `deadline` (on `clock`) it stops after the next complete pair of rounds, once `min_reps` are in
    (a bounded run keeps every subject's first-place count equal)."""
    out: dict[str, list] = {n: [] for n in subjects}
    k = len(subjects)
    for r, order in enumerate(rotations(list(subjects), reps)):
        if deadline is not None and r >= min_reps and r % k == 0 and clock() > deadline:
            break
        for name in order:
            out[name].append(subjects[name]())
    return out


def pair_ratios(base: list[tuple[float, float]], other: list[tuple[float, float]]) -> dict:
    """Decode and prefill speedups of `other` over `base` from the runs of the same round (the
    two measured next to each other): median, min and max over the rounds."""
    dec = [o[1] / b[1] for b, o in zip(base, other) if b[1] and o[1]]
    pre = [b[0] / o[0] for b, o in zip(base, other) if b[0] and o[0]]
    out = {}
    if dec:
        out.update(speedup_decode=_median(dec), speedup_decode_min=min(dec), speedup_decode_max=max(dec))
    if pre:
        out.update(speedup_prefill=_median(pre), speedup_prefill_min=min(pre), speedup_prefill_max=max(pre))
    return out


@dataclass
class E2EReport:
    """What the end-to-end benchmark found; `to_dict()` is what goes to events and tracking."""

    model_id: str
    level: int
    tiny: bool
    candidates: list[str]
    passed: bool = False
    verdict: str = ""
    weights: str = ""
    device: str = ""
    dtype: str = ""
    prompt_len: int = 0
    new_tokens: int = 0
    batch: int = 1
    seed: int = 0
    tp: int = 1  # tensor-parallel ranks (fastkernels.measure.tp)
    tp_ranks: list[dict] = field(default_factory=list)  # per rank: device, figures, multicast settings
    shadow: dict | None = None  # patching.ShadowReport.to_dict()
    token_match: float | None = None  # free-running greedy, patched vs baseline
    token_match_noise: float | None = None  # the same, baseline fp32 vs baseline
    top1_agreement: float | None = None  # teacher-forced, patched vs baseline
    top1_agreement_noise: float | None = None
    logit_rel_error: float | None = None  # mean over positions of |l - l_base| / |l_base|
    logit_rel_error_noise: float | None = None
    has_nan: bool = False
    timings: dict[str, dict] = field(default_factory=dict)  # baseline_eager, baseline_compiled, patched
    speedup_decode: float | None = None  # patched decode tok/s over the eager baseline's (median of rounds)
    speedup_prefill: float | None = None
    speedup_decode_min: float | None = None  # the spread of that ratio over the bracketed rounds
    speedup_decode_max: float | None = None
    speedup_prefill_min: float | None = None
    speedup_prefill_max: float | None = None
    blamed: dict[str, str] = field(default_factory=dict)  # candidate key -> reason
    error: str | None = None  # why the patched run failed, if it did
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def to_dict(self) -> dict:
        return asdict(self)

    def metrics(self) -> dict[str, float]:
        """What tracking records of the run (history shows `speedup`): passed (1/0), the greedy token
        match, and the decode and prefill speedups over the eager baseline (medians of rounds)."""
        out = {"passed": 1.0 if self.passed else 0.0}
        for name, value in (("token_match", self.token_match), ("speedup", self.speedup_decode),
                            ("speedup_prefill", self.speedup_prefill)):
            if value is not None:
                out[name] = float(value)
        return out

    @classmethod
    def from_dict(cls, data: dict) -> "E2EReport":
        return cls(**{k: v for k, v in data.items() if k in cls.__dataclass_fields__})


# ---- the parent side ---------------------------------------------------------------------------

def _defaults(tiny: bool, prompt_len, new_tokens) -> tuple[int, int]:
    return (prompt_len or (8 if tiny else 128)), (new_tokens or (8 if tiny else 32))


def _canonical(candidates, level: int) -> tuple[dict[str, str], dict[str, str]]:
    """({"L1/op": code}, {"L1/op": the caller's key}) of the candidates, nothing imported."""
    from fastkernels.registry.patching import find_candidates

    if isinstance(candidates, Mapping):
        codes, names = {}, {}
        for key, value in candidates.items():
            found = find_candidates({key: value}, level)
            for canon, code in found.items():
                codes[canon], names[canon] = code, str(key)
        return codes, names
    codes = find_candidates(candidates, level)
    return codes, {k: k for k in codes}


class _ProgressTail:
    """Turns the child's progress file (JSON lines) into E2EProgress events while the job runs."""

    def __init__(self, path: Path, sink: Callable) -> None:
        self.path, self.sink, self.pos = path, sink, 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name="fk-e2e-progress", daemon=True)

    def _drain(self) -> None:
        try:
            with open(self.path) as fh:
                fh.seek(self.pos)
                for line in fh:
                    if not line.endswith("\n"):
                        break
                    self.pos += len(line.encode())
                    try:
                        d = json.loads(line)
                        self.sink(ev.E2EProgress(stage=d["stage"], done=d["done"], total=d["total"],
                                                 detail=d.get("detail", "")))
                    except (ValueError, KeyError):
                        continue
        except OSError:
            return

    def _run(self) -> None:
        while not self.stop.wait(0.2):
            self._drain()
        self._drain()

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join(timeout=5)


def _read_partial(path) -> dict[str, dict]:
    """{set name: result} from a partial-results file (JSON lines; a torn last line is skipped)."""
    out = {}
    try:
        lines = Path(path).read_text().splitlines()
    except OSError:
        return out
    for line in lines:
        try:
            d = json.loads(line)
            out[d["set"]] = d["result"]
        except (ValueError, KeyError, TypeError):
            continue
    return out


def _job(kind: str, payload: dict, timeout: float, label: str, sink: Callable):
    """Run the child's "e2e" or "probe" job (fastkernels.measure.e2e_child), on N ranks under --tp."""
    from fastkernels.measure import e2e_child, tp
    from fastkernels.sandbox import run_job

    env = None
    target = {"e2e": e2e_child._e2e_job, "probe": e2e_child._probe_job}[kind]
    if payload.get("tp", 1) > 1:  # the same measurement on N ranks (fastkernels.measure.tp)
        target = {"e2e": tp.tp_e2e_job, "probe": tp.tp_probe_job}[kind]
        env = tp.tp_environment()
    with tempfile.TemporaryDirectory(prefix="fk-e2e-") as tmp:
        progress = Path(tmp) / "progress.jsonl"
        progress.touch()
        payload = {**payload, "progress_file": str(progress)}
        with _ProgressTail(progress, sink):
            return run_job(target, payload, timeout=timeout, label=label, env=env)


def _blame(payload: dict, keys: list[str], timeout: float, sink: Callable, reason: str) -> dict[str, str]:
    """Culprits among `keys` (which together failed with `reason`) by bisection: a subset is bad
    when a short patched run of it, in a fresh child, raises, hangs, crashes or produces NaN/Inf.
    Returns {key: reason}. A failure that needs several kernels together blames that group."""
    probes = [0]

    def bad(subset: list[str]) -> str | None:
        probes[0] += 1
        sink(ev.E2EProgress(stage="blame", done=probes[0], total=2 * len(keys),
                            detail=f"trying {', '.join(subset) or 'the baseline alone'}"))
        job = _job("probe", {**payload, "only": subset}, timeout,
                   f"blame probe ({', '.join(subset) or 'baseline'})", sink)
        if not job.ok:
            return job.error
        if job.value.get("nan"):
            return f"produced NaN/Inf in the model's output ({job.value['nan']})"
        return None

    def search(group: list[str], why: str) -> dict[str, str]:
        if len(group) == 1:
            return {group[0]: why}
        half = len(group) // 2
        found: dict[str, str] = {}
        for part in (group[:half], group[half:]):
            part_why = bad(part)
            if part_why:
                found.update(search(part, part_why))
        return found or {k: f"fails only together with {', '.join(x for x in group if x != k)}: {why}"
                         for k in group}

    return search(keys, reason)


def run_benchmarks(model: str, level, candidate_sets: Mapping[str, object], *, tiny: bool = False,
                   prompt_len: int | None = None, new_tokens: int | None = None, batch: int = 1,
                   device: str | None = None, dtype: str | None = None, sink: Callable | None = None,
                   seed: int = 0, timeout: float | None = None, compile_baseline: bool | None = None,
                   blame: bool = True, tp: int = 1, timing_reps: int | None = None,
                   timing_budget_s: float | None = None, partial_file: str | Path | None = None,
                   retry_sets_alone: bool = True) -> dict[str, E2EReport]:
    """Several candidate sets against one loaded model (one child job; the baseline and the noise
    floor are measured once). candidate_sets: {name: directory or {op: code or path}}.
    timing_reps: timed rounds per comparison (default TIMING_REPS on a GPU); timing_budget_s: the
    rounds stop early (in complete pairs, at least 2) once the timing has taken this long.
    partial_file: each set's result is appended there (JSON lines) as soon as it is measured; if
    the job then dies, those results are reported instead of nothing. retry_sets_alone=False: a
    job that dies is not re-run set by set (each rerun loads the model again).
    tp > 1: the model tensor-parallel over that many processes (fastkernels.measure.tp)."""
    from fastkernels.models.catalog import resolve
    from fastkernels.registry.tasks import check_level

    sink = sink or ev.null_sink
    lvl = check_level(level)
    entry = resolve(model, tiny)
    prompt_len, new_tokens = _defaults(tiny, prompt_len, new_tokens)
    if batch < 1 or prompt_len < 1 or new_tokens < 2:
        raise UsageError("need --batch >= 1, --prompt-len >= 1 and --new-tokens >= 2")
    if tp != 1:
        from fastkernels.gpu.devices import visible_gpus
        from fastkernels.models.sharding import check_tp, check_tp_level

        check_tp(entry.hf_config(), tp, entry.model_id)
        check_tp_level(lvl, tp)
        gpus = visible_gpus()
        if gpus and len(gpus) < tp and not (device or "").startswith("cpu"):
            raise UsageError(f"--tp {tp} needs {tp} GPUs; {len(gpus)} visible (CUDA_VISIBLE_DEVICES)")
    from fastkernels.registry.tasks import load_task

    sets, names, skipped = {}, {}, {}
    for set_name, cands in candidate_sets.items():
        codes, keys = _canonical(cands, lvl)
        if not isinstance(cands, Mapping):  # a folder may hold kernels of other families' ops
            unused = [k for k in codes if entry.family not in load_task(lvl, k.split("/", 1)[1]).FAMILIES]
            skipped[set_name] = [f"skipped {k}: not an operator of {entry.family} models" for k in unused]
            codes = {k: v for k, v in codes.items() if k not in unused}
        if not codes:
            where = cands if not isinstance(cands, Mapping) else "the candidates given"
            raise UsageError(f"no candidate kernels for level {lvl} in {where} "
                             f"(expected files like L{lvl}/<op>.py); nothing to benchmark")
        sets[set_name], names[set_name] = codes, keys
    base_payload = {"model": entry.model_id, "tiny": tiny, "level": lvl, "prompt_len": prompt_len,
                    "new_tokens": new_tokens, "batch": batch, "device": device, "dtype": dtype or "bfloat16",
                    "seed": seed, "compile_baseline": compile_baseline, "tp": tp, "timing_reps": timing_reps,
                    "timing_budget_s": timing_budget_s}
    timeout = timeout or (600.0 if tiny else 1800.0)
    start = time.monotonic()
    job = _job("e2e",
               {**base_payload, "sets": sets, "partial_file": str(partial_file) if partial_file else None}, timeout,
               f"end-to-end run of {entry.display_name}", sink)
    results: dict[str, dict] = {}
    partial = _read_partial(partial_file) if partial_file and not job.ok else {}
    if job.ok:
        results = job.value["sets"]
    elif partial or not retry_sets_alone:  # what it measured before it died, the rest failed with it
        results = {name: partial.get(name) or {"error": job.error} for name in sets}
    elif len(sets) > 1:  # which set broke it: run each on its own
        for set_name, codes in sets.items():
            one = _job("e2e", {**base_payload, "sets": {set_name: codes}}, timeout,
                       f"end-to-end run of {entry.display_name} ({set_name})", sink)
            results[set_name] = one.value["sets"][set_name] if one.ok else {"error": one.error}
    else:
        results = {next(iter(sets)): {"error": job.error}}
    reports = {}
    for set_name, codes in sets.items():
        data = dict(results.get(set_name) or {"error": "no result"})
        # No measurement at all: the child died (crash, hang, CUDA error) rather than report.
        job_failed = "logit_rel_error_noise" not in data
        report = E2EReport.from_dict({"model_id": entry.model_id, "level": lvl, "tiny": tiny,
                                      "candidates": [names[set_name][k] for k in codes], **data})
        report.model_id, report.level, report.tiny, report.tp = entry.model_id, lvl, tiny, tp
        if report.shadow:
            for op in report.shadow["ops"]:
                if not op["passed"]:
                    key = names[set_name].get(op["op"], op["op"])
                    report.blamed[key] = "shadow check: " + "; ".join(op["failures"][:3])
        if blame and (report.error or report.has_nan):
            failing = [k for k in codes if names[set_name][k] not in report.blamed]
            probe_payload = {**base_payload, "sets": {set_name: codes}}
            probe_timeout = min(timeout, 300.0 if tiny else 900.0)  # each probe reloads the model
            if failing and job_failed:
                sink(ev.E2EProgress(stage="blame", done=0, total=1, detail="does the baseline alone run?"))
                control = _job("probe", {**probe_payload, "only": []}, probe_timeout,
                               "baseline control run", sink)
                if not control.ok or control.value.get("nan"):
                    report.notes.append("not blaming any kernel: the model fails without them too "
                                        f"({control.error or 'NaN/Inf'})")
                    failing = []
            if failing:
                why = report.error or "produced NaN/Inf in the model's output"
                found = _blame(probe_payload, failing, probe_timeout, sink, why)
                for k, why in found.items():
                    report.blamed[names[set_name][k]] = why
        report.notes += skipped.get(set_name, [])
        for op, why in report.blamed.items():
            sink(ev.KernelBlamed(op=op, reason=why))
        _judge(report)
        report.seconds = time.monotonic() - start
        sink(ev.E2EResult(passed=report.passed, report=report))
        reports[set_name] = report
    return reports


def run_benchmark(model: str, level, candidates=None, *, tiny: bool = False, prompt_len: int | None = None,
                  new_tokens: int | None = None, batch: int = 1, device: str | None = None,
                  dtype: str | None = None, sink: Callable | None = None, seed: int = 0, tp: int = 1,
                  timeout: float | None = None, compile_baseline: bool | None = None,
                  blame: bool = True) -> E2EReport:
    """Patch `candidates` (a directory laid out like tasks/candidate, default ./tasks/candidate, or
    a dict {op or "L1/op": code or path}) into `model` at `level` and measure it against the
    baseline model; see the module docstring. Runs in a sandboxed child; never raises for what the
    candidates do (it is in the report)."""
    if candidates is None:
        candidates = Path.cwd() / "tasks" / "candidate"
    reports = run_benchmarks(model, level, {"candidates": candidates}, tiny=tiny, prompt_len=prompt_len,
                             new_tokens=new_tokens, batch=batch, device=device, dtype=dtype, sink=sink,
                             seed=seed, timeout=timeout, compile_baseline=compile_baseline, blame=blame, tp=tp)
    return reports["candidates"]


def _judge(r: E2EReport) -> None:
    """Set passed and the one-line verdict."""
    reasons = []
    if r.error:
        reasons.append(f"the patched model failed: {r.error}")
    if r.shadow is not None and not r.shadow["passed"]:
        reasons.append("shadow check failed: " + "; ".join(r.shadow["failures"][:3]))
    if r.has_nan:
        reasons.append("NaN/Inf in the patched model's logits")
    if r.logit_rel_error is not None and r.logit_rel_error_noise is not None:
        multiple = NOISE_MULTIPLE  # the interpreter rounds as a GPU does (fastkernels.gpu.interpreter)
        limit = max(multiple * r.logit_rel_error_noise, ABS_ERROR_FLOOR)
        if not r.logit_rel_error <= limit:
            reasons.append(f"logit error {r.logit_rel_error:.3g} above {multiple:g}x the noise floor "
                           f"({r.logit_rel_error_noise:.3g})")
    elif not r.error:
        reasons.append("no model-level measurement")
    r.passed = not reasons
    if r.passed:
        speed = ""
        if r.speedup_decode and "cuda" in r.device:
            speed = f", decode speedup {r.speedup_decode:.2f}x"
            if r.speedup_decode_min is not None and r.speedup_decode_max is not None:
                speed += f" ({r.speedup_decode_min:.2f}-{r.speedup_decode_max:.2f} over the rounds)"
        tokens = f"token match {r.token_match:.0%}"
        if r.token_match_noise is not None and r.token_match_noise < 1:
            # Random weights give near-flat logits: greedy tokens then diverge under any rounding
            # change, the fp32 baseline's too; its figure says how much the match can mean.
            tokens += f" (the baseline in fp32 matches {r.token_match_noise:.0%})"
        r.verdict = (f"pass: shadow check clean, logit error {r.logit_rel_error:.3g} vs noise floor "
                     f"{r.logit_rel_error_noise:.3g}, {tokens}{speed}")
    else:
        r.verdict = "fail: " + "; ".join(reasons)
    if r.blamed:
        r.verdict += " | blamed: " + ", ".join(sorted(r.blamed))


def default_candidates_dir() -> Path:
    return Path(os.getcwd()) / "tasks" / "candidate"


# ---- presentation (the CLI's `fastkernels bench`) ------------------------------------------------

def _pct(x) -> str:
    return "-" if x is None else f"{x:.1%}"


def _num(x, fmt=".3g") -> str:
    return "-" if x is None else format(x, fmt)


def _spread(mid, lo, hi, fmt=".1f") -> str:
    if mid is None:
        return "-"
    if lo is None or hi is None:
        return format(mid, fmt)
    return f"{format(mid, fmt)} [{format(lo, fmt)} - {format(hi, fmt)}]"


def report_renderables(r: E2EReport) -> list:
    """Rich tables of a report: shadow check per operator, model-level figures beside the noise
    floor, timings, blame and the verdict."""
    from rich.table import Table
    from rich.text import Text

    out = [Text(f"{r.model_id}{' (tiny)' if r.tiny else ''} · level {r.level} · {r.device} {r.dtype}"
                f"{f' · tensor parallel x{r.tp}' if r.tp > 1 else ''} · "
                f"{r.weights} · batch {r.batch}, prompt {r.prompt_len}, {r.new_tokens} new tokens")]
    if r.shadow:
        t = Table(title="shadow check (each patched op beside its baseline, in the model)")
        for col in ("operator", "calls", "sites", "max |err|", "mean |err|", "worst site", "worst/allowed", "result"):
            t.add_column(col)
        for op in r.shadow["ops"]:
            t.add_row(op["op"], str(op["calls"]), str(op["sites"]), _num(op["max_abs"]), _num(op["mean_abs"]),
                      op["worst_site"] or "-", _num(op["worst_ratio"], ".2f"),
                      "[green]pass[/]" if op["passed"] else "[red]FAIL[/]")
        out.append(t)
        for f in r.shadow["failures"][:10]:
            out.append(Text(f"  {f}", style="red"))
    t = Table(title="model level (patched vs baseline, beside the baseline's own bf16-vs-fp32 noise floor)")
    for col in ("figure", "patched", "noise floor"):
        t.add_column(col)
    t.add_row("greedy token match (free running)", _pct(r.token_match), _pct(r.token_match_noise))
    t.add_row("top-1 agreement (teacher forced)", _pct(r.top1_agreement), _pct(r.top1_agreement_noise))
    t.add_row("mean relative logit error", _num(r.logit_rel_error), _num(r.logit_rel_error_noise))
    t.add_row("NaN/Inf in logits", "yes" if r.has_nan else "no", "")
    out.append(t)
    if r.timings:
        t = Table(title="timing (medians of timed runs, each after a warm-up; \\[min - max] beside)")
        for col in ("model", "attention", "runs", "prefill ms", "decode tok/s", "note"):
            t.add_column(col)
        for name in ("baseline_eager", "baseline_eager_attention", "baseline_this_set", "baseline_compiled", "patched"):
            tm = r.timings.get(name)
            if tm:
                t.add_row(name.replace("_", " "), tm.get("attention", ""), str(tm.get("reps", "")),
                          _spread(tm.get("prefill_ms"), tm.get("prefill_ms_min"), tm.get("prefill_ms_max")),
                          _spread(tm.get("decode_tok_s"), tm.get("decode_tok_s_min"), tm.get("decode_tok_s_max")),
                          tm.get("note", ""))
        out.append(t)
        out.append(Text(f"speedup vs eager baseline (same rounds, alternating who goes first): decode "
                        f"{_spread(r.speedup_decode, r.speedup_decode_min, r.speedup_decode_max, '.2f')}x, prefill "
                        f"{_spread(r.speedup_prefill, r.speedup_prefill_min, r.speedup_prefill_max, '.2f')}x"))
    for op, why in r.blamed.items():
        out.append(Text(f"blamed {op}: {why}", style="red"))
    if r.error:
        out.append(Text(f"error: {r.error}", style="red"))
    for note in r.notes:
        out.append(Text(f"note: {note}", style="dim"))
    out.append(Text(r.verdict, style="bold green" if r.passed else "bold red"))
    return out
