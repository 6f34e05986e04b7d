"""The annotation pipeline: distil -> filter -> extract -> rows for the geo3k training builder.

1. **Distil**: ``samples`` chain-of-thought solutions per problem from a multimodal model (images as data URLs).
2. **Filter**: keep trajectories whose final answer math-verify finds equal to the problem's answer.
3. **Extract**: a text model lists the atomic visual facts of up to ``extract_from`` correct trajectories as JSON,
   validated, de-duplicated and capped (an invalid reply gets ``extract_attempts - 1`` repair turns).
4. **Rows**: ``{id, problem, answer, images, visual_annotations, provenance}``.

Every paid call goes through the one :class:`~perception_r1.judge.client.JudgeClient` (retries, timeouts,
bounded concurrency) and its outcome is committed to a :class:`~.store.StageStore` before the next step, so a
killed run resumes without repeating it. Failed calls are not stored, and a stored reply is reused only while it
is valid (a trajectory with a readable final answer, an extraction that parses), so a rerun after fixing a
misconfigured server asks again instead of reusing its empty or garbled replies; ``refresh`` re-asks every call.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import mimetypes
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..jsonl import iter_jsonl
from ..judge.client import JudgeClient, JudgeError
from ..rewards.math_answer import MATH_TIMEOUT_S, extract_answer, last_boxed, verify_answer
from . import prompts
from .store import StageStore, fingerprint

logger = logging.getLogger(__name__)

STAGES = ("distill", "extract")


@dataclass
class Problem:
    """One valid input row. ``images`` are resolved, existing files; ``extra`` holds passthrough fields."""

    line: int
    id: str
    problem: str
    answer: str
    images: list[Path]
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class RowIssue:
    """An input row that was skipped, and why."""

    line: int
    id: str | None
    error: str


PASSTHROUGH_FIELDS = ("choices",)


def _check_image(path: Path) -> str | None:
    if not path.is_file():
        return f"image not found: {path}"
    try:
        from PIL import Image

        with Image.open(path) as image:
            image.verify()
    except Exception as exc:  # PIL raises many types for a corrupt file
        return f"image unreadable: {path} ({type(exc).__name__})"
    return None


def load_problems(
    path: str | Path, limit: int | None = None, image_root: str | Path | None = None
) -> tuple[list[Problem], list[RowIssue]]:
    """Read problem rows ``{id?, problem, answer, image | images}``; bad rows become :class:`RowIssue` (not errors).

    Image paths are resolved against ``image_root`` (default: the input file's folder). ``limit`` keeps the first
    ``limit`` rows of the file (valid or not).
    """
    root = Path(image_root) if image_root else Path(path).resolve().parent
    problems: list[Problem] = []
    issues: list[RowIssue] = []
    seen_ids: set[str] = set()
    for index, (line, obj) in enumerate(iter_jsonl(path, require_object=False, on_invalid="yield")):
        if limit is not None and index >= limit:
            break
        if isinstance(obj, json.JSONDecodeError):
            issues.append(RowIssue(line, None, f"invalid JSON ({obj.msg})"))
            continue
        if not isinstance(obj, dict):
            issues.append(RowIssue(line, None, f"expected a JSON object, got {type(obj).__name__}"))
            continue
        row_id = str(obj["id"]) if obj.get("id") is not None else f"line{line}"
        error = None
        problem = obj.get("problem")
        answer = obj.get("answer")
        images_field = obj.get("images", obj.get("image"))
        if not isinstance(problem, str) or not problem.strip():
            error = f"field 'problem': expected a non-empty string, got {problem!r}"
        elif isinstance(answer, bool) or not isinstance(answer, (str, int, float)) or not str(answer).strip():
            error = f"field 'answer': unreadable answer {answer!r} (expected a non-empty string or number)"
        elif row_id in seen_ids:
            error = f"field 'id': duplicate id {row_id!r}"
        elif images_field is None or images_field == []:
            error = "field 'images'/'image': missing (expected an image path or a list of paths)"
        else:
            raw = [images_field] if isinstance(images_field, str) else images_field
            if not isinstance(raw, list) or not all(isinstance(p, str) and p for p in raw):
                error = f"field 'images': expected a path or a list of paths, got {images_field!r}"
            else:
                paths = [(root / p) if not Path(p).is_absolute() else Path(p) for p in raw]
                for p in paths:
                    error = _check_image(p)
                    if error:
                        break
        if error:
            issues.append(RowIssue(line, row_id, error))
            continue
        seen_ids.add(row_id)
        extra = {k: obj[k] for k in PASSTHROUGH_FIELDS if k in obj}
        problems.append(Problem(line, row_id, problem.strip(), str(answer).strip(), paths, extra))
    return problems, issues


def image_data_url(path: Path) -> str:
    """``data:<mime>;base64,…`` for an image file (what OpenAI-compatible vision endpoints accept inline)."""
    mime = mimetypes.guess_type(path.name)[0] or "image/png"
    return f"data:{mime};base64,{base64.b64encode(path.read_bytes()).decode('ascii')}"


@dataclass
class AnnotateConfig:
    """What the pipeline asks for; every field is a CLI option of ``perception-r1 annotate``."""

    samples: int = 4
    distill_temperature: float = 0.7
    distill_max_tokens: int = 4096
    seed: int | None = 0
    """Sample ``s`` is requested with ``seed + s`` (reproducible, and distinct requests per sample)."""
    distill_system: str = prompts.DISTILL_SYSTEM_PROMPT
    distill_template: str = prompts.DISTILL_USER_TEMPLATE
    extract_from: int = 1
    """How many correct trajectories per problem to extract annotations from (merged, de-duplicated)."""
    max_annotations: int = 8
    max_annotation_chars: int = 80
    extract_attempts: int = 2
    extract_max_tokens: int = 1024
    structured_output: str = "json_schema"
    concurrency: int = 16
    """Problems in flight (requests in flight are bounded by each client's own ``max_concurrency``)."""

    def __post_init__(self) -> None:
        for name in ("samples", "extract_from", "max_annotations", "max_annotation_chars", "extract_attempts"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.concurrency < 1:
            raise ValueError(f"concurrency must be >= 1, got {self.concurrency}")
        if "{problem}" not in self.distill_template:
            raise ValueError("the distillation prompt template must contain the {problem} placeholder")
        prompts.structured_output_params(self.structured_output, self.max_annotations)  # validates the mode


@dataclass
class StageUsage:
    """Calls and tokens of one stage: made in this run, and reused from the store."""

    calls: int = 0
    cached: int = 0
    refreshed: int = 0
    """Calls made again although the store held a reply: an invalid one, or any with ``refresh``."""
    failed: int = 0
    invalid: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_prompt_tokens: int = 0
    cached_completion_tokens: int = 0

    def cost(self, price_in: float, price_out: float, include_cached: bool = False) -> float:
        """USD at ``price_in``/``price_out`` per 1M prompt/completion tokens."""
        p, c = self.prompt_tokens, self.completion_tokens
        if include_cached:
            p, c = p + self.cached_prompt_tokens, c + self.cached_completion_tokens
        return (p * price_in + c * price_out) / 1e6


@dataclass
class ProblemResult:
    """The outcome for one problem: ``status`` is ok / no_correct / no_annotations / failed."""

    problem: Problem
    status: str
    row: dict[str, Any] | None = None
    detail: str = ""
    samples: int = 0
    correct: int = 0


class Annotator:
    """Runs the pipeline over problems with two clients (which may point at the same endpoint) and a store."""

    def __init__(
        self,
        distill: JudgeClient,
        extract: JudgeClient,
        store: StageStore,
        config: AnnotateConfig | None = None,
        refresh: bool = False,
    ) -> None:
        self.distill = distill
        self.extract = extract
        self.store = store
        self.config = config or AnnotateConfig()
        self.refresh = refresh
        self.usage = {stage: StageUsage() for stage in STAGES}

    # ------------------------------------------------------------------ paid calls through the store
    async def _call(
        self,
        stage: str,
        item: str,
        fp: str,
        client: JudgeClient,
        messages: list,
        params: dict,
        valid: Callable[[str], bool] | None = None,
    ) -> Any:
        """The stored reply text for ``(stage, item, fp)``, or a fresh call stored at once; ``None`` on failure.

        A stored reply is reused only when ``valid(text)`` holds (and not with ``refresh``): a reply that was
        useless when it arrived (empty, no answer, unparseable) is asked again on every rerun.
        """
        usage = self.usage[stage]
        stored = self.store.get(stage, item, fp)
        if stored is not None:
            text = stored.value.get("text") if isinstance(stored.value, dict) else None
            if not self.refresh and isinstance(text, str) and (valid is None or valid(text)):
                usage.cached += 1
                usage.cached_prompt_tokens += stored.prompt_tokens
                usage.cached_completion_tokens += stored.completion_tokens
                return text
            usage.refreshed += 1
        try:
            result = await client.chat(messages, **params)
        except JudgeError as exc:
            usage.failed += 1
            logger.warning("%s call for %s failed: %s", stage, item, exc)
            return None
        usage.calls += 1
        usage.prompt_tokens += result.prompt_tokens
        usage.completion_tokens += result.completion_tokens
        # Committed before anything else runs on this loop: a kill after this line never repeats the call.
        self.store.put(stage, item, fp, {"text": result.text}, result.prompt_tokens, result.completion_tokens)
        return result.text

    # ------------------------------------------------------------------ stages
    def distill_messages(self, problem: Problem) -> list[dict[str, Any]]:
        """System prompt, then one user turn: the images (data URLs) followed by the rendered prompt text."""
        text = prompts.render_template(
            self.config.distill_template,
            problem=problem.problem,
            choices=prompts.choices_line(problem.extra.get("choices")),
        )
        content: list[dict[str, Any]] = [
            {"type": "image_url", "image_url": {"url": image_data_url(p)}} for p in problem.images
        ]
        content.append({"type": "text", "text": text})
        return [{"role": "system", "content": self.config.distill_system}, {"role": "user", "content": content}]

    async def _distill(self, problem: Problem) -> list[str | None]:
        cfg = self.config
        messages = self.distill_messages(problem)
        base_fp = fingerprint(self.distill.settings.model, messages, cfg.distill_temperature, cfg.distill_max_tokens)

        async def one(sample: int) -> str | None:
            params: dict[str, Any] = {"temperature": cfg.distill_temperature, "max_tokens": cfg.distill_max_tokens}
            if cfg.seed is not None:
                params["seed"] = cfg.seed + sample
            fp = fingerprint(base_fp, params.get("seed"), sample)
            return await self._call(
                "distill", f"{problem.id}#{sample}", fp, self.distill, messages, params, valid=self.valid_trajectory
            )

        return list(await asyncio.gather(*(one(s) for s in range(cfg.samples))))

    @classmethod
    def valid_trajectory(cls, trajectory: str) -> bool:
        """A distillation reply worth keeping: it has a readable final answer (right or wrong)."""
        return bool(trajectory.strip()) and cls.final_answer(trajectory) is not None

    @staticmethod
    def final_answer(trajectory: str) -> str | None:
        """The package's answer extraction, falling back to the last ``\\boxed{}`` when there is no answer block."""
        return extract_answer(trajectory) or last_boxed(trajectory or "")

    def _is_correct(self, problem: Problem, trajectory: str) -> tuple[str | None, bool]:
        answer = self.final_answer(trajectory)
        if not answer:
            return None, False
        try:
            return answer, verify_answer(problem.answer, answer, MATH_TIMEOUT_S) == 1.0
        except Exception as exc:  # math-verify on a pathological answer: treat as wrong, keep going
            logger.debug("verify failed for %s: %s", problem.id, exc)
            return answer, False

    def extract_messages(self, problem: Problem, trajectory: str) -> list[dict[str, Any]]:
        cfg = self.config
        system = prompts.render_template(
            prompts.EXTRACT_SYSTEM_PROMPT, max_len=str(cfg.max_annotation_chars), max_items=str(cfg.max_annotations)
        )
        user = prompts.render_template(prompts.EXTRACT_USER_TEMPLATE, problem=problem.problem, trajectory=trajectory)
        return [{"role": "system", "content": system}, {"role": "user", "content": user}]

    async def _extract(self, problem: Problem, sample: int, trajectory: str) -> tuple[list[str] | None, str]:
        """Annotations of one trajectory, or ``(None, reason)``; invalid replies get repair turns."""
        cfg = self.config
        messages = self.extract_messages(problem, trajectory)
        params = {
            "temperature": 0.0,
            "max_tokens": cfg.extract_max_tokens,
            **prompts.structured_output_params(cfg.structured_output, cfg.max_annotations),
        }
        reason = ""
        for attempt in range(cfg.extract_attempts):
            fp = fingerprint(self.extract.settings.model, messages, params)
            text = await self._call(
                "extract", f"{problem.id}#{sample}", fp, self.extract, messages, params, valid=self._valid_extraction
            )
            if text is None:
                return None, "extract call failed"
            try:
                return prompts.parse_annotations(text, cfg.max_annotations, cfg.max_annotation_chars), ""
            except ValueError as exc:
                reason = f"invalid extraction reply: {exc}"
                self.usage["extract"].invalid += 1
                logger.info("problem %s sample %d attempt %d: %s", problem.id, sample, attempt + 1, reason)
                messages = [
                    *messages,
                    {"role": "assistant", "content": text},
                    {
                        "role": "user",
                        "content": f"That reply was invalid ({exc}). Reply with JSON only, exactly of the form "
                        '{"annotations": ["fact 1", "fact 2"]}.',
                    },
                ]
        return None, reason

    def _valid_extraction(self, text: str) -> bool:
        try:
            prompts.parse_annotations(text, self.config.max_annotations, self.config.max_annotation_chars)
        except ValueError:
            return False
        return True

    async def run_problem(self, problem: Problem) -> ProblemResult:
        """All stages for one problem (never raises on model output or endpoint failure)."""
        cfg = self.config
        trajectories = await self._distill(problem)
        failed_samples = sum(t is None for t in trajectories)
        correct: list[tuple[int, str, str]] = []
        for sample, text in enumerate(trajectories):
            if text is None:
                continue
            answer, ok = self._is_correct(problem, text)
            if ok and answer is not None:
                correct.append((sample, text, answer))
        result = ProblemResult(problem, "ok", samples=len(trajectories) - failed_samples, correct=len(correct))
        if not correct:
            if failed_samples:
                result.status, result.detail = "failed", f"{failed_samples} distillation call(s) failed"
            else:
                result.status, result.detail = "no_correct", f"none of {cfg.samples} trajectories has a correct answer"
            return result
        used: list[dict[str, Any]] = []
        merged: list[str] = []
        reasons: list[str] = []
        extract_failed = False
        for sample, text, answer in correct[: cfg.extract_from]:
            annotations, reason = await self._extract(problem, sample, text)
            if annotations is None:
                reasons.append(f"sample {sample}: {reason}")
                extract_failed = extract_failed or reason == "extract call failed"
                continue
            used.append({"sample": sample, "answer": answer, "annotations": annotations, "response": text})
            merged.extend(annotations)
        merged = prompts.dedupe(merged, cfg.max_annotations)
        if not merged:
            result.status = "failed" if extract_failed else "no_annotations"
            result.detail = "; ".join(reasons)
            return result
        row: dict[str, Any] = {
            "id": problem.id,
            "problem": problem.problem,
            "answer": problem.answer,
            "images": [str(p) for p in problem.images],
            **problem.extra,
            "visual_annotations": merged,
            "provenance": {
                "distill_model": self.distill.settings.model,
                "extract_model": self.extract.settings.model,
                "samples": cfg.samples,
                "correct_samples": [s for s, _, _ in correct],
                "trajectories": used,
            },
        }
        result.row = row
        return result

    async def run(
        self, problems: Sequence[Problem], on_done: Callable[[ProblemResult], None] | None = None
    ) -> list[ProblemResult]:
        """Every problem, at most ``concurrency`` in flight; results in input order."""
        semaphore = asyncio.Semaphore(self.config.concurrency)

        async def guarded(problem: Problem) -> ProblemResult:
            async with semaphore:
                result = await self.run_problem(problem)
            if on_done is not None:
                on_done(result)
            return result

        return list(await asyncio.gather(*(guarded(p) for p in problems)))
