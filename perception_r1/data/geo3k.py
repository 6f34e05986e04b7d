"""``perception-r1 data geo3k``: Geometry3K-style problems with visual annotations -> verl parquet.

Two input layouts, told apart per record by the annotation field's type:

- the released Perception-R1 parquet (``problem`` with ``<image>``, ``answer``, ``images`` as
  ``[{"bytes", "path"}]``, ``visual_key_info`` as one string ``<info1>…</info1><info2>…</info2>``), from a local
  file or ``--from-hub REPO_ID``;
- plain JSONL/JSON/parquet rows whose annotation field is a list of strings (``--annotations-field``, e.g.
  ``logic_forms`` for the Inter-GPS Geometry3K files) and whose ``image``/``images`` are paths relative to the
  input file (or ``--image-root``).

Each output row: ``prompt`` = one user turn ``<image>…<image>{problem} {FORMAT_PROMPT}`` (one placeholder per
image), ``images`` = ``[{"bytes", "min_pixels", "max_pixels"}]``, ``data_source = "geo3k_visual"``,
``reward_model = {"style": "rule", "ground_truth": answer}``, ``extra_info`` = ``{index, split, question,
answer, visual_annotations, source, record, id}``.
"""

from __future__ import annotations

import argparse
import logging
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ..commands.common import progress
from ..rewards import geo3k_visual
from .common import (
    IMAGE_PLACEHOLDER,
    AtomicParquetWriter,
    DataError,
    count_records,
    describe,
    field_error,
    image_entry,
    image_list,
    iter_hub_records,
    read_records,
    verl_row,
    with_image_placeholders,
)

logger = logging.getLogger(__name__)

DATA_SOURCE = geo3k_visual.DATA_SOURCE
ABILITY = "math"

#: The released Perception-R1 geo3k run's format instruction (its launcher's SYSTEM_PROMPT, passed to EasyR1 as
#: ``data.format_prompt``, which appends it to the problem after one space), kept verbatim, line breaks included.
FORMAT_PROMPT = (
    "You FIRST think about the reasoning process as an internal monologue and then provide the final answer.\n"
    " The reasoning process MUST BE enclosed within <think> </think> tags, and the answer process MUST BE "
    "enclosed within <answer> </answer> tags.\n"
    " The final answer MUST BE put in \\boxed{} in <answer> </answer> tags."
)
#: The instruction of the original's ``<perception>`` template variant (scored with ``--set template=perception``):
#: the same words as :data:`FORMAT_PROMPT`, with the figure's facts described first in a ``<perception>`` block.
PERCEPTION_FORMAT_PROMPT = (
    "You FIRST describe the visual information in the image that the problem needs, THEN think about the "
    "reasoning process as an internal monologue, and then provide the final answer.\n"
    " The visual description MUST BE enclosed within <perception> </perception> tags, the reasoning process MUST "
    "BE enclosed within <think> </think> tags, and the answer process MUST BE enclosed within <answer> </answer> "
    "tags, in this order.\n"
    " The final answer MUST BE put in \\boxed{} in <answer> </answer> tags."
)
FORMAT_PROMPTS = {"think": FORMAT_PROMPT, "perception": PERCEPTION_FORMAT_PROMPT}

#: Annotation fields tried in order when ``--annotations-field`` is not given.
DEFAULT_ANNOTATION_FIELDS = ("visual_key_info", "visual_annotations")
DEFAULT_IMAGE_FIELDS = ("images", "image")
PAPER_MIN_PIXELS = 3136
PAPER_MAX_PIXELS = 1806336

_INFO_TAG = re.compile(r"<info(\d+)>(.*?)</info\1>", re.DOTALL)


def parse_visual_key_info(text: str, where: str, field: str = "visual_key_info") -> list[str]:
    """``"<info1>a</info1>\\n<info2>b</info2>"`` -> ``["a", "b"]`` (ordered by tag number).

    >>> parse_visual_key_info("<info1> AB = 5 </info1><info2>C is on the circle</info2>", "row")
    ['AB = 5', 'C is on the circle']
    """
    found = [(int(number), body.strip()) for number, body in _INFO_TAG.findall(text)]
    if not found:
        raise field_error(where, field, f"expected <info1>…</info1><info2>…</info2> tags, got {describe(text)}")
    numbers = [n for n, _ in found]
    if len(set(numbers)) != len(numbers):
        raise field_error(where, field, f"repeated tag numbers {sorted(numbers)}")
    for number, body in found:
        if not body:
            raise field_error(where, field, f"<info{number}> is empty")
    return [body for _, body in sorted(found)]


def annotations_of(record: dict[str, Any], where: str, field: str | None, allow_missing: bool) -> list[str] | None:
    """The record's visual annotations: a tag string (released layout) or a list of strings (plain rows)."""
    names = (field,) if field else DEFAULT_ANNOTATION_FIELDS
    name = next((n for n in names if record.get(n) is not None), names[0])
    value = record.get(name)
    if value is None or (isinstance(value, (list, tuple, str)) and not len(value)):
        if allow_missing:
            return None
        wanted = " or ".join(repr(n) for n in names)
        raise field_error(
            where,
            name,
            f"missing or empty (expected visual annotations in {wanted}; "
            "pass --allow-missing-annotations to keep such rows without a visual reward)",
        )
    if isinstance(value, str):
        return parse_visual_key_info(value, where, name)
    if not isinstance(value, (list, tuple)):
        raise field_error(where, name, f"expected a list of strings or an <infoK> tag string, got {describe(value)}")
    out = []
    for i, item in enumerate(value):
        if not isinstance(item, str):
            raise field_error(where, f"{name}[{i}]", f"expected a string, got {describe(item)}")
        if item.strip():  # blank entries (the Inter-GPS logic-form files have some) carry nothing to check
            out.append(item.strip())
    if not out:
        if allow_missing:
            return None
        raise field_error(where, name, "has only blank strings (expected at least one visual annotation)")
    return out


def _text_field(record: dict[str, Any], where: str, field: str) -> str:
    value = record.get(field)
    if isinstance(value, bool) or not isinstance(value, (str, int, float)) or not str(value).strip():
        raise field_error(where, field, f"expected a non-empty string, got {describe(value)}")
    return str(value).strip()


def build_row(
    record: dict[str, Any],
    where: str,
    *,
    index: int,
    source: str,
    base_dir: Path | None,
    args: argparse.Namespace,
) -> dict[str, Any]:
    """One input record -> one verl row; :class:`DataError` naming ``where`` and the field on bad input."""
    problem = _text_field(record, where, args.problem_field)
    answer = _text_field(record, where, args.answer_field)
    image_field = args.image_field or next(
        (f for f in DEFAULT_IMAGE_FIELDS if record.get(f) is not None), DEFAULT_IMAGE_FIELDS[0]
    )
    images = image_list(record.get(image_field), where, image_field, base_dir)
    annotations = annotations_of(record, where, args.annotations_field, args.allow_missing_annotations)
    problem = with_image_placeholders(problem, len(images), where, args.problem_field)
    instruction = args.format_prompt if args.format_prompt is not None else FORMAT_PROMPTS[args.template]
    prompt = f"{problem} {instruction.strip()}" if instruction.strip() else problem
    split = args.split or (record.get("split") if isinstance(record.get("split"), str) else None) or "train"
    record_id = record.get(args.id_field) if args.id_field else None
    extra_info = {
        "index": index,
        "split": split,
        "question": problem.replace(IMAGE_PLACEHOLDER, "").strip(),
        "answer": answer,
        "visual_annotations": annotations,
        "source": source,
        "record": where,
        "id": None if record_id is None else str(record_id),
    }
    try:
        geo3k_visual.validate(answer, extra_info)  # the scorer's own contract for this data source
    except ValueError as exc:
        raise DataError(f"{where}: {exc}") from None
    return verl_row(
        data_source=DATA_SOURCE,
        prompt=prompt,
        images=[image_entry(img, args.min_pixels, args.max_pixels) for img in images],
        ground_truth=answer,
        extra_info=extra_info,
        ability=ABILITY,
        where=where,
    )


def output_schema(min_pixels: int | None, max_pixels: int | None) -> Any:
    """A fixed parquet schema (inference would guess ``null`` for columns that start with missing values)."""
    import pyarrow as pa

    image_fields = [pa.field("bytes", pa.binary())]
    if min_pixels:
        image_fields.append(pa.field("min_pixels", pa.int64()))
    if max_pixels:
        image_fields.append(pa.field("max_pixels", pa.int64()))
    return pa.schema(
        [
            pa.field("data_source", pa.string()),
            pa.field("prompt", pa.list_(pa.struct([pa.field("role", pa.string()), pa.field("content", pa.string())]))),
            pa.field("images", pa.list_(pa.struct(image_fields))),
            pa.field("ability", pa.string()),
            pa.field(
                "reward_model", pa.struct([pa.field("style", pa.string()), pa.field("ground_truth", pa.string())])
            ),
            pa.field(
                "extra_info",
                pa.struct(
                    [
                        pa.field("index", pa.int64()),
                        pa.field("split", pa.string()),
                        pa.field("question", pa.string()),
                        pa.field("answer", pa.string()),
                        pa.field("visual_annotations", pa.list_(pa.string())),
                        pa.field("source", pa.string()),
                        pa.field("record", pa.string()),
                        pa.field("id", pa.string()),
                    ]
                ),
            ),
        ]
    )


def _sources(args: argparse.Namespace) -> Iterator[tuple[str, Path | None, int | None, Iterator[tuple[str, dict]]]]:
    """``(source label, image base dir, record count, records)`` for each input."""
    if args.from_hub:
        count, records = iter_hub_records(args.from_hub, args.hub_split)
        yield f"{args.from_hub}:{args.hub_split}", args.image_root, count, records
    for path in args.input or []:
        base_dir = args.image_root if args.image_root is not None else path.resolve().parent
        yield str(path), base_dir, count_records(path), read_records(path)


def run(args: argparse.Namespace) -> int:
    if not args.input and not args.from_hub:
        raise DataError("nothing to read: give --input FILE [FILE ...] and/or --from-hub REPO_ID")
    if args.limit is not None and args.limit < 1:
        raise DataError("--limit must be at least 1")
    for flag, value in (("--min-pixels", args.min_pixels), ("--max-pixels", args.max_pixels)):
        if value is not None and value < 0:
            raise DataError(f"{flag} must be >= 0 (0 leaves the processor's default)")
    if args.min_pixels and args.max_pixels and args.min_pixels > args.max_pixels:
        raise DataError(f"--min-pixels {args.min_pixels} is above --max-pixels {args.max_pixels}")

    n_rows = n_images = n_annotations = n_without = 0
    with AtomicParquetWriter(args.output, schema=output_schema(args.min_pixels, args.max_pixels)) as sink:
        for source, base_dir, count, records in _sources(args):
            total = count if args.limit is None or count is None else min(count, args.limit - n_rows)
            with progress(total, desc=f"geo3k {Path(source).name}") as bar:
                for where, record in records:
                    if args.limit is not None and n_rows >= args.limit:
                        break
                    row = build_row(record, where, index=n_rows, source=source, base_dir=base_dir, args=args)
                    sink.write(row)
                    n_rows += 1
                    n_images += len(row["images"])
                    annotations = row["extra_info"]["visual_annotations"]
                    n_annotations += len(annotations or ())
                    n_without += annotations is None
                    bar.update(1)
    logger.info(
        "wrote %d rows (%d images, %d visual annotations, %d rows without) -> %s",
        n_rows,
        n_images,
        n_annotations,
        n_without,
        args.output,
    )
    return 0


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "geo3k",
        help="Geometry3K-style problems with visual annotations -> verl parquet (data_source geo3k_visual)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    src = parser.add_argument_group("input")
    src.add_argument("--input", type=Path, nargs="+", help="JSONL / JSON list / parquet files, read in order")
    src.add_argument("--from-hub", metavar="REPO_ID", help="a Hugging Face Hub dataset (datasets.load_dataset)")
    src.add_argument("--hub-split", default="train", help="split of --from-hub (default: train)")
    src.add_argument(
        "--image-root", type=Path, default=None, help="folder of relative image paths (default: the input's folder)"
    )
    fields = parser.add_argument_group("fields")
    fields.add_argument("--problem-field", default="problem", help="question text (default: problem)")
    fields.add_argument("--answer-field", default="answer", help="ground-truth answer (default: answer)")
    fields.add_argument("--image-field", default=None, help="image path(s)/bytes (default: images, else image)")
    fields.add_argument(
        "--annotations-field",
        default=None,
        help="visual annotations: a list of strings or an <infoK> tag string "
        "(default: visual_key_info, else visual_annotations; e.g. logic_forms for Inter-GPS Geometry3K)",
    )
    fields.add_argument("--id-field", default="id", help="record id kept in extra_info.id (default: id)")
    out = parser.add_argument_group("output")
    out.add_argument("--output", type=Path, required=True, help="parquet file to write (atomically)")
    out.add_argument("--split", default=None, help="extra_info.split (default: the record's split, else train)")
    out.add_argument(
        "--template",
        choices=sorted(FORMAT_PROMPTS),
        default="think",
        help="response template the prompt asks for: think (the released run) or perception (a <perception> "
        "block first; score with --set template=perception)",
    )
    out.add_argument(
        "--format-prompt",
        default=None,
        help="instruction appended to each problem after a space (default: the --template's instruction, for think "
        "the released run's think/answer/\\boxed{} instruction; '' for none)",
    )
    out.add_argument(
        "--min-pixels", type=int, default=PAPER_MIN_PIXELS, help="per-image Qwen resize lower bound (0: unset)"
    )
    out.add_argument(
        "--max-pixels", type=int, default=PAPER_MAX_PIXELS, help="per-image Qwen resize upper bound (0: unset)"
    )
    out.add_argument(
        "--allow-missing-annotations",
        action="store_true",
        help="keep rows without annotations (visual_annotations null: no visual reward) instead of failing",
    )
    out.add_argument("--limit", type=int, default=None, help="keep at most this many rows")
    parser.set_defaults(func=run)
