"""What the Fine-tune widget says about a run, in words: its buttons' and labels' tips,
the before / best / kept lines, and the time left. No Qt."""

from __future__ import annotations

from typing import Any

__all__ = ["TIPS", "before_text", "best_text", "fmt_s", "measured_on", "outcome_text"]

TIPS = {
    "zero-shot": (
        "Train ZSSR, a small network learnt from this slide's own LR (no HR, no "
        "training set), on the part of the slide in view (up to 512 x 512 LR px "
        "around its centre), for Steps steps; the SR layer then uses it. Slow: "
        "ZSSR runs 8 passes per tile"
    ),
    "adapt": (
        "Learn, without HR, a correction of this slide's LR (scanner blur, noise, "
        "JPEG) into the clean LR the SR layer's model expects (unpaired, Maeda 2020), "
        "from the drawn rectangles or the part in view (up to 1024 x 1024 LR px), for "
        "Steps steps; the SR layer then uses the corrected model"
    ),
    "eta": (
        "Time left, from the pace of the steps done so far (the first step, which "
        "warms up, is not counted); capped by the time limit"
    ),
    "result": (
        "PSNR and SSIM on the held-out stripes of the regions (not trained on), "
        "before fine-tuning and for the best state so far / kept"
    ),
}
"""The tooltips of the Zero-shot and Adapt buttons, the ETA and the result label."""


def measured_on(mode: str, *, zero_shot: bool = False) -> str:
    """What a result line's numbers compare, in words (the start of the line)."""
    if mode == "unpaired":
        return "clean check "
    if zero_shot:
        return "held-out pseudo-pairs, bicubic -> ZSSR: "
    if mode == "self-supervised":
        return "held-out pseudo-pairs: "
    return "held-out HR stripes: "


def before_text(before: dict[str, float]) -> str:
    return f"before: PSNR {before['psnr']:.2f} dB, SSIM {before['ssim']:.4f}"


def best_text(ev: Any, before: dict[str, float] | None) -> str:
    """The result label for a `Validated` event that is the best so far."""
    start = f"{before_text(before)}\n" if before else ""
    return f"{start}best so far (step {ev.step}): PSNR {ev.psnr:.2f} dB, SSIM {ev.ssim:.4f}"


def outcome_text(res: Any, *, zero_shot: bool = False) -> str:
    """The end of a run (a `FinetuneResult`): before -> after when the new model is kept,
    else why the original one is."""
    b, a = res.before, res.after
    stopped = f", stopped after {res.steps_done} steps" if res.stopped else ""
    if not res.improved:
        if res.mode == "unpaired":
            return f"{res.notes[-1]}{stopped}"
        return (
            f"validation did not improve (PSNR {b['psnr']:.2f} dB before, SSIM "
            f"{b['ssim']:.4f}{stopped}): the original model is kept"
        )
    check = measured_on(res.mode, zero_shot=zero_shot)
    fell = " (SSIM fell a little)" if a["ssim"] < b["ssim"] else ""
    return (
        f"{check}PSNR {b['psnr']:.2f} -> {a['psnr']:.2f} dB, SSIM {b['ssim']:.4f} -> "
        f"{a['ssim']:.4f}{fell} (best step {res.best_step}{stopped})"
    )


def fmt_s(seconds: float) -> str:
    """Seconds as '42 s' or '3 min 05 s' ('?' when not finite)."""
    if seconds != seconds or seconds == float("inf"):
        return "?"
    m, s = divmod(int(round(seconds)), 60)
    return f"{m} min {s:02d} s" if m else f"{s} s"
