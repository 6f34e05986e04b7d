"""``perception-r1 data geo3k`` on the real Geometry3K problems, loaded back through verl's own ``RLHFDataset``."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from perception_r1.cli import main
from perception_r1.data.geo3k import FORMAT_PROMPT, parse_visual_key_info
from perception_r1.testing.qwen_processor import load_qwen_vl_processor, save_qwen2_5_vl_processor
from perception_r1.testing.verl_dataset import image_pad_runs, load_rlhf_dataset, vision_inputs


@pytest.fixture(scope="module")
def processor(tmp_path_factory: pytest.TempPathFactory):
    return load_qwen_vl_processor(save_qwen2_5_vl_processor(tmp_path_factory.mktemp("qwen") / "qwen2_5_vl"))


@pytest.fixture(scope="module")
def problems(shared_data: Path) -> list[dict]:
    path = shared_data / "geometry3k" / "problems.jsonl"
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def build(*argv: str) -> int:
    return main(["data", "geo3k", *argv])


def test_geometry3k_logic_forms_round_trip_through_verl(tmp_path: Path, processor, problems, shared_data: Path):
    out = tmp_path / "geo3k.parquet"
    source = shared_data / "geometry3k" / "problems.jsonl"
    assert build("--input", str(source), "--annotations-field", "logic_forms", "--output", str(out)) == 0

    table = pq.read_table(out)
    assert table.num_rows == len(problems) == 10
    dataset = load_rlhf_dataset(out, processor, tmp_path / "verl_cache")
    assert len(dataset) == len(problems)  # nothing filtered: every prompt tokenized with its image
    for i, problem in enumerate(problems):
        item = dataset[i]
        assert item["data_source"] == "geo3k_visual"
        assert item["reward_model"] == {"style": "rule", "ground_truth": problem["answer"]}
        extra = item["extra_info"]
        assert extra["visual_annotations"] == [f for f in problem["logic_forms"] if f.strip()]
        assert extra["index"] == item["index"] == i
        assert extra["question"] == problem["problem"] and extra["id"] == str(problem["id"])
        assert extra["split"] == "train"

        content = item["raw_prompt"][0]["content"]
        image_items = [c for c in content if c["type"] == "image"]
        assert len(image_items) == 1
        text = "".join(c["text"] for c in content if c["type"] == "text")
        assert text == f"{problem['problem']} {FORMAT_PROMPT}"

        images, rendered, inputs = vision_inputs(dataset, item, processor)
        assert len(images) == rendered.count("<|vision_start|><|image_pad|><|vision_end|>") == 1
        runs = image_pad_runs(inputs["input_ids"][0].tolist())
        assert runs == [int(g.prod()) // 4 for g in inputs["image_grid_thw"]]
        # verl resized the image within the row's bounds; the processor kept that size (14-pixel patches)
        (grid,) = inputs["image_grid_thw"].tolist()
        assert (images[0].height, images[0].width) == (grid[1] * 14, grid[2] * 14)
        # The stored bytes are the original file's, and the resize kept the real image's proportions.
        with Image.open(shared_data / "geometry3k" / problem["image"]) as original:
            assert (original.width, original.height) == (problem["image_width"], problem["image_height"])
        stored = table.column("images")[i].as_py()[0]
        assert stored["bytes"] == (shared_data / "geometry3k" / problem["image"]).read_bytes()
        assert (stored["min_pixels"], stored["max_pixels"]) == (3136, 1806336)
    # Row 10 (id 20) has a blank logic form in the Inter-GPS file: dropped, the others kept in order.
    assert "" in problems[9]["logic_forms"]


def test_multi_image_rows_and_pixel_bounds_reach_verl(tmp_path: Path, processor, problems, shared_data: Path):
    """Two images per row, paths relative to --image-root; max_pixels set in the parquet bounds verl's resize."""
    rows = [
        {
            "question": "Compare both figures. " + problems[k]["problem"],
            "solution": problems[k]["answer"],
            "images": [problems[k]["image"], problems[k + 1]["image"]],
            "annotations": problems[k]["logic_forms"][:2] + problems[k + 1]["logic_forms"][:1],
        }
        for k in (0, 2)
    ]
    source = tmp_path / "rows.jsonl"
    source.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    out = tmp_path / "multi.parquet"
    max_pixels = 200 * 28 * 28  # at most 200 merged tokens per image
    assert (
        build(
            "--input", str(source), "--image-root", str(shared_data / "geometry3k"),
            "--problem-field", "question", "--answer-field", "solution", "--annotations-field", "annotations",
            "--max-pixels", str(max_pixels), "--split", "val", "--output", str(out),
        )
        == 0
    )  # fmt: skip
    dataset = load_rlhf_dataset(out, processor, tmp_path / "verl_cache")
    assert len(dataset) == 2
    for i, row in enumerate(rows):
        item = dataset[i]
        assert item["extra_info"]["split"] == "val"
        assert item["extra_info"]["visual_annotations"] == row["annotations"]
        assert sum(c["type"] == "image" for c in item["raw_prompt"][0]["content"]) == 2
        images, _, inputs = vision_inputs(dataset, item, processor)
        assert len(images) == 2
        runs = image_pad_runs(inputs["input_ids"][0].tolist())
        assert runs == [int(g.prod()) // 4 for g in inputs["image_grid_thw"]] and len(runs) == 2
        for grid, tokens in zip(inputs["image_grid_thw"], runs, strict=True):
            assert int(grid.prod()) * 14 * 14 <= max_pixels and tokens <= 200
    # The bound really bites: the second row's second image (628x453) is larger than max_pixels.
    assert problems[3]["image_width"] * problems[3]["image_height"] > max_pixels


def released_parquet(path: Path, problems: list[dict], shared_data: Path, key_info=None) -> None:
    """A small parquet in the released Perception-R1 layout, made from the real problems."""
    records = []
    for p in problems:
        forms = [f for f in p["logic_forms"] if f.strip()]
        records.append(
            {
                "problem": "<image>" + p["problem"],
                "answer": p["answer"],
                "images": [{"bytes": (shared_data / "geometry3k" / p["image"]).read_bytes(), "path": None}],
                "visual_key_info": key_info(p)
                if key_info
                else "\n".join(f"<info{k}>{f}</info{k}>" for k, f in enumerate(forms, start=1)),
            }
        )
    pq.write_table(pa.Table.from_pylist(records), path)


def test_released_layout(tmp_path: Path, processor, problems, shared_data: Path):
    source = tmp_path / "geo3k_with_visual_key_info.parquet"
    released_parquet(source, problems[:4], shared_data)
    out = tmp_path / "released.parquet"
    assert build("--input", str(source), "--output", str(out)) == 0
    dataset = load_rlhf_dataset(out, processor, tmp_path / "verl_cache")
    assert len(dataset) == 4
    for i, p in enumerate(problems[:4]):
        item = dataset[i]
        assert item["extra_info"]["visual_annotations"] == [f for f in p["logic_forms"] if f.strip()]
        assert item["reward_model"]["ground_truth"] == p["answer"]
        assert item["extra_info"]["record"] == f"{source.name}[{i}]"
        content = item["raw_prompt"][0]["content"]
        assert [c["type"] for c in content] == ["image", "text"]  # the released <image> is kept, not doubled
        images, _, inputs = vision_inputs(dataset, item, processor)
        assert len(image_pad_runs(inputs["input_ids"][0].tolist())) == len(images) == 1


def test_parse_visual_key_info():
    text = "<info2>C is the center</info2>\n<info1> AB = 5 </info1> trailing text"
    assert parse_visual_key_info(text, "r") == ["AB = 5", "C is the center"]
    for bad in ("AB = 5; C is the center", "<info1></info1>", "<info1>a</info1><info1>b</info1>"):
        with pytest.raises(Exception, match="visual_key_info"):
            parse_visual_key_info(bad, "r")


def _assert_fails(capsys, out: Path, argv: list[str], *needles: str) -> None:
    assert build(*argv, "--output", str(out)) == 2
    err = capsys.readouterr().err
    for needle in needles:
        assert needle in err, (needle, err)
    assert not out.exists()
    assert not [p for p in out.parent.iterdir() if p.name.startswith(f".{out.name}")], "temp file left behind"


def test_bad_rows_exit_2_naming_row_and_field(tmp_path: Path, capsys, problems, shared_data: Path):
    work = tmp_path / "in"
    work.mkdir()
    shutil.copytree(shared_data / "geometry3k" / "images", work / "images")
    out = tmp_path / "out" / "geo3k.parquet"

    rows = [dict(p) for p in problems[:4]]
    del rows[2]["answer"]
    (work / "missing_answer.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    _assert_fails(
        capsys,
        out,
        ["--input", str(work / "missing_answer.jsonl"), "--annotations-field", "logic_forms"],
        "missing_answer.jsonl:3",
        "'answer'",
    )

    rows = [dict(p) for p in problems[:4]]
    rows[1]["image"] = "images/does_not_exist.png"
    (work / "missing_image.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    _assert_fails(
        capsys,
        out,
        ["--input", str(work / "missing_image.jsonl"), "--annotations-field", "logic_forms"],
        "missing_image.jsonl:2",
        "'image'",
        "does_not_exist.png",
    )

    released_parquet(
        work / "released.parquet",
        problems[:3],
        shared_data,
        key_info=lambda p: "; ".join(p["logic_forms"]) if p["id"] == 13 else "<info1>x</info1>",
    )
    _assert_fails(capsys, out, ["--input", str(work / "released.parquet")], "released.parquet[2]", "'visual_key_info'")

    rows = [dict(p) for p in problems[:2]]
    rows[1]["problem"] = "<image><image>" + rows[1]["problem"]
    (work / "placeholders.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    _assert_fails(
        capsys,
        out,
        ["--input", str(work / "placeholders.jsonl"), "--annotations-field", "logic_forms"],
        "placeholders.jsonl:2",
        "'problem'",
        "2 <image>",
    )

    rows = [dict(p) for p in problems[:2]]
    rows[0]["logic_forms"] = []
    (work / "no_annotations.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    _assert_fails(
        capsys,
        out,
        ["--input", str(work / "no_annotations.jsonl"), "--annotations-field", "logic_forms"],
        "no_annotations.jsonl:1",
        "'logic_forms'",
    )
    # ...unless rows without annotations are wanted: visual_annotations is null, the scorer leaves visual out.
    assert (
        build(
            "--input",
            str(work / "no_annotations.jsonl"),
            "--annotations-field",
            "logic_forms",
            "--allow-missing-annotations",
            "--output",
            str(out),
        )
        == 0
    )
    extra = pq.read_table(out).column("extra_info").to_pylist()
    assert extra[0]["visual_annotations"] is None and extra[1]["visual_annotations"]


def test_hub_rows_keep_encoded_image_bytes(tmp_path: Path, problems, shared_data: Path):
    """The --from-hub path minus the download: HF Image columns are read back as the original encoded bytes."""
    import datasets

    from perception_r1.data.common import load_image, undecoded_images

    paths = [str(shared_data / "geometry3k" / p["image"]) for p in problems[:2]]
    features = datasets.Features(
        {"images": datasets.List(datasets.Image()), "image": datasets.Image(), "answer": datasets.Value("string")}
    )
    encoded = [{"bytes": Path(p).read_bytes(), "path": None} for p in paths]  # how Hub parquet stores images
    dataset = datasets.Dataset.from_dict(
        {"images": [[e] for e in encoded], "image": encoded, "answer": ["80", "13"]}, features=features
    )
    assert isinstance(dataset[1]["image"], Image.Image)  # decoded by default: the cast below is what keeps bytes
    record = dict(undecoded_images(dataset)[1])
    assert isinstance(record["image"]["bytes"], bytes) and isinstance(record["images"][0]["bytes"], bytes)
    image = load_image(record["images"][0], "hub[1]", "images")
    assert image.data == Path(paths[1]).read_bytes()
    assert (image.width, image.height) == (problems[1]["image_width"], problems[1]["image_height"])
