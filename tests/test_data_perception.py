"""Perception builders (refcoco, pixmo-count, pageocr, coco-detection) on the real COCO images and OCR pages.

Each builder's parquet is checked against its source (boxes converted xywh -> xyxy, points, page text, the 80
category names), loaded back through verl's own ``RLHFDataset`` with a real-vocabulary Qwen processor (one image
placeholder per row, ``<|image_pad|>`` runs matching the processor's grid), and bad records stop the build with
exit code 2, a message naming the record and field, and no output file.
"""

from __future__ import annotations

import hashlib
import json
import pickle
import re
import shutil
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from perception_r1.cli import main
from perception_r1.data.perception_prompts import (
    COCO_CATEGORIES,
    check_launch_data,
    counting_prompt,
    detection_prompt,
    grounding_prompt,
    ocr_prompt,
)
from perception_r1.testing.qwen_processor import (
    load_qwen_vl_processor,
    save_qwen2_5_vl_processor,
    save_qwen2_vl_processor,
)
from perception_r1.testing.verl_dataset import image_pad_runs, load_rlhf_dataset, vision_inputs

OCR_MAX_PIXELS = 256 * 28 * 28  # keeps the tall pages cheap in the processor


def build(*argv: str) -> int:
    return main(["data", *argv])


def coco(shared_data: Path) -> dict:
    return json.loads((shared_data / "coco" / "instances.json").read_text(encoding="utf-8"))


def write_refer_fixture(shared_data: Path, root: Path) -> list[dict]:
    """A refer-layout folder (refs(unc).p + instances.json) over the real COCO annotations."""
    data = coco(shared_data)
    cats = {c["id"]: c["name"] for c in data["categories"]}
    refs = []
    for k, ann in enumerate(data["annotations"][:12]):
        sentences = [{"sent": f"the {cats[ann['category_id']]} number {k}", "sent_id": 2 * k}]
        if k % 3 == 0:
            sentences.append({"sent": f"{cats[ann['category_id']]}  on  the  left", "sent_id": 2 * k + 1})
        refs.append(
            {
                "ref_id": 100 + k,
                "ann_id": ann["id"],
                "image_id": ann["image_id"],
                "split": "train" if k < 9 else "val",
                "category_id": ann["category_id"],
                "sentences": sentences,
            }
        )
    root.mkdir(parents=True, exist_ok=True)
    with open(root / "refs(unc).p", "wb") as handle:
        pickle.dump(refs, handle, protocol=2)
    (root / "instances.json").write_text(json.dumps(data), encoding="utf-8")
    return refs


def write_pixmo_fixture(shared_data: Path, path: Path, categories: tuple[str, ...] = ("person", "orange")) -> list:
    """Hub-layout PixMo-Count rows: each (image, category) with its objects' box centres as points."""
    data = coco(shared_data)
    cats = {c["id"]: c["name"] for c in data["categories"]}
    images = {img["id"]: img for img in data["images"]}
    rows = []
    for image_id, img in images.items():
        for name in categories:
            anns = [a for a in data["annotations"] if a["image_id"] == image_id and cats[a["category_id"]] == name]
            if not anns:
                continue
            file = shared_data / "coco" / "images" / img["file_name"]
            rows.append(
                {
                    "image_url": f"file://{file}",
                    "image_sha256": hashlib.sha256(file.read_bytes()).hexdigest(),
                    "count": len(anns),
                    "points": [
                        {"x": a["bbox"][0] + a["bbox"][2] / 2, "y": a["bbox"][1] + a["bbox"][3] / 2} for a in anns
                    ],
                    "label": name,
                }
            )
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return rows


@pytest.fixture(scope="module")
def built(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Every perception parquet built once from the real data (the tests below only read them)."""
    tmp = tmp_path_factory.mktemp("perception_data")
    refs = write_refer_fixture(shared_data, tmp / "refer")
    pixmo_rows = write_pixmo_fixture(shared_data, tmp / "pixmo.jsonl")
    pixmo_images = tmp / "pixmo_images"
    pixmo_images.mkdir()
    for row in pixmo_rows:  # the hub layout names images by sha256
        src = Path(row["image_url"][len("file://") :])
        shutil.copy(src, pixmo_images / f"{row['image_sha256']}{src.suffix}")
    out = {name: tmp / f"{name}.parquet" for name in ("coco", "ocr", "refcoco", "pixmo")}
    assert build("coco-detection", "--annotations", str(shared_data / "coco" / "instances.json"),
                 "--min-pixels", "3136", "--max-pixels", "1003520", "--output", str(out["coco"])) == 0  # fmt: skip
    assert build("pageocr", "--input", str(shared_data / "ocr" / "pages.jsonl"),
                 "--max-pixels", str(OCR_MAX_PIXELS), "--output", str(out["ocr"])) == 0  # fmt: skip
    assert build("refcoco", "--refer-dir", str(tmp / "refer"), "--split", "train",
                 "--image-root", str(shared_data / "coco" / "images"), "--output", str(out["refcoco"])) == 0  # fmt: skip
    assert build("pixmo-count", "--input", str(tmp / "pixmo.jsonl"), "--image-root", str(pixmo_images),
                 "--output", str(out["pixmo"])) == 0  # fmt: skip
    return {"paths": out, "refs": refs, "pixmo_rows": pixmo_rows, "tmp": tmp}


def rows_of(path: Path) -> list[dict]:
    return pq.read_table(path).to_pylist()


# ---------------------------------------------------------------------------------------------- row contents


def test_coco_detection_rows_match_instances(built, shared_data):
    data = coco(shared_data)
    cats = {c["id"]: c["name"] for c in data["categories"]}
    rows = rows_of(built["paths"]["coco"])
    assert [r["extra_info"]["image_id"] for r in rows] == sorted(img["id"] for img in data["images"])
    assert tuple(cats[k] for k in sorted(cats)) == COCO_CATEGORIES  # the file's 80 names, in id order
    for i, row in enumerate(rows):
        assert row["data_source"] == "coco_detection" and row["extra_info"]["index"] == i
        prompt = row["prompt"][0]["content"]
        assert prompt == detection_prompt() and prompt.count("<image>") == 1
        assert prompt.endswith("teddy bear, hair drier, toothbrush.") and prompt.count(", ") == 79
        img = next(x for x in data["images"] if x["id"] == row["extra_info"]["image_id"])
        assert row["extra_info"]["image_size"] == [img["width"], img["height"]]
        anns = [a for a in data["annotations"] if a["image_id"] == img["id"] and not a.get("iscrowd")]
        expected = sorted(
            (
                [a["bbox"][0], a["bbox"][1], a["bbox"][0] + a["bbox"][2], a["bbox"][1] + a["bbox"][3]],
                cats[a["category_id"]],
            )
            for a in anns
        )
        got = sorted((o["bbox"], o["label"]) for o in row["reward_model"]["ground_truth"])
        assert len(got) == len(expected) == row["extra_info"]["num_objects"]
        for (gb, gl), (eb, el) in zip(got, expected, strict=True):
            assert gl == el and gb == pytest.approx(eb, abs=1e-9)
        (entry,) = row["images"]  # embedded by default: every Ray node reads the image from the parquet itself
        assert entry["bytes"] == (shared_data / "coco" / "images" / img["file_name"]).read_bytes()
        assert "image" not in entry  # verl's process_image refuses an entry with both
        assert (entry["min_pixels"], entry["max_pixels"]) == (3136, 1003520)
    assert sum(r["extra_info"]["num_objects"] for r in rows) == 36


def test_pageocr_rows_hold_the_page_text(built, shared_data):
    pages = [json.loads(line) for line in (shared_data / "ocr" / "pages.jsonl").read_text().splitlines() if line]
    rows = rows_of(built["paths"]["ocr"])
    assert len(rows) == len(pages) == 5
    for row, page in zip(rows, pages, strict=True):
        assert row["data_source"] == "pageocr"
        assert row["prompt"][0]["content"] == "<image>OCR this image."
        assert row["reward_model"]["ground_truth"] == (shared_data / "ocr" / page["text"]).read_text(encoding="utf-8")
        assert row["extra_info"]["image_size"] == [page["width"], page["height"]]
        assert row["extra_info"]["page_id"] == page["id"]
        assert row["images"][0]["max_pixels"] == OCR_MAX_PIXELS


def test_refcoco_refer_layout_converts_boxes(built, shared_data):
    data = coco(shared_data)
    anns = {a["id"]: a for a in data["annotations"]}
    rows = rows_of(built["paths"]["refcoco"])
    expected = [(ref, s) for ref in built["refs"] if ref["split"] == "train" for s in ref["sentences"]]
    assert len(rows) == len(expected) > 9  # one row per sentence of the train refs
    for row, (ref, sent) in zip(rows, expected, strict=True):
        x, y, w, h = anns[ref["ann_id"]]["bbox"]
        assert row["reward_model"]["ground_truth"] == pytest.approx([x, y, x + w, y + h])
        question = " ".join(sent["sent"].split())
        assert row["prompt"][0]["content"] == f"<image>Output the bounding box of the {question} in the image."
        assert row["extra_info"]["ref_id"] == ref["ref_id"] and row["extra_info"]["ann_id"] == ref["ann_id"]
        assert row["extra_info"]["split"] == "train"


def test_refcoco_records_layout_and_first_sentence(built, shared_data, tmp_path):
    data = coco(shared_data)
    images = {img["id"]: img for img in data["images"]}
    records = []
    for ann in data["annotations"][:4]:
        x, y, w, h = ann["bbox"]
        records.append(
            {"image": images[ann["image_id"]]["file_name"], "solution": [x, y, x + w, y + h],
             "sentences": ["first words", "second words"], "ann_id": ann["id"]}
        )  # fmt: skip
    src = tmp_path / "rec.json"
    src.write_text(json.dumps(records))
    out = tmp_path / "rec.parquet"
    assert build("refcoco", "--input", str(src), "--bbox-format", "xyxy", "--sentences", "first", "--thinking",
                 "--image-root", str(shared_data / "coco" / "images"), "--output", str(out)) == 0  # fmt: skip
    rows = rows_of(out)
    for row, record in zip(rows, records, strict=True):
        assert row["reward_model"]["ground_truth"] == pytest.approx(record["solution"])
    assert all(r["prompt"][0]["content"] == grounding_prompt("first words", thinking=True) for r in rows)
    assert "<think> </think>" in rows[0]["prompt"][0]["content"]


def test_pixmo_rows_points_and_counts(built):
    rows = rows_of(built["paths"]["pixmo"])
    source = built["pixmo_rows"]
    assert len(rows) == len(source) >= 3
    for row, src in zip(rows, source, strict=True):
        assert row["prompt"][0]["content"] == counting_prompt(src["label"])
        got = [c for point in row["reward_model"]["ground_truth"] for c in point]
        assert got == pytest.approx([c for p in src["points"] for c in (p["x"], p["y"])])
        assert row["extra_info"]["count"] == src["count"] == len(src["points"])
        assert row["extra_info"]["image_sha256"] == src["image_sha256"]
    assert max(r["extra_info"]["count"] for r in rows) == 6  # the six people of image 49


def test_pixmo_download_checks_sha256(built, tmp_path):
    """--download fetches missing images (file:// URLs here), keeps the good ones, skips a changed image."""
    rows = [dict(r) for r in built["pixmo_rows"][:2]]
    rows[1]["image_sha256"] = "0" * 64  # the image "changed upstream"
    src = tmp_path / "pixmo.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in rows))
    images, out = tmp_path / "images", tmp_path / "out.parquet"
    argv = ["pixmo-count", "--input", str(src), "--image-root", str(images), "--output", str(out), "--download"]
    assert build(*argv) == 2 and not out.exists()  # the second image is unavailable
    assert build(*argv, "--skip-missing-images") == 0
    assert [r["extra_info"]["image_sha256"] for r in rows_of(out)] == [rows[0]["image_sha256"]]
    assert sorted(p.name.split(".")[0] for p in images.iterdir()) == [rows[0]["image_sha256"]]


def test_prompts_follow_table_8():
    assert grounding_prompt("the  dog.") == "<image>Output the bounding box of the the dog in the image."
    assert counting_prompt("apple") == "<image>Output all the bounding boxes of the apple"
    assert ocr_prompt() == "<image>OCR this image."
    assert detection_prompt(["cat", "dog"]) == "<image>Please output bbox coordinates and names of cat, dog."
    assert ocr_prompt(thinking=True) == (
        "<image>OCR this image. Output the thinking process in <think> </think> and final answer in "
        "<answer> </answer> tags."
    )
    assert len(COCO_CATEGORIES) == len(set(COCO_CATEGORIES)) == 80


def test_launch_data_check(built):
    path = built["paths"]["coco"]
    assert check_launch_data(path, thinking=False, min_pixels=3136, max_pixels=1003520) == 9
    with pytest.raises(ValueError, match=r"row 0: field 'prompt'.*THINKING=1"):
        check_launch_data(path, thinking=True)
    with pytest.raises(ValueError, match=r"row 0: field 'images\[0\].max_pixels': 1003520 but the run uses 1806336"):
        check_launch_data(path, thinking=False, min_pixels=3136, max_pixels=1806336)
    with pytest.raises(ValueError, match="does not exist"):
        check_launch_data(built["tmp"] / "missing.parquet", thinking=False)


# ---------------------------------------------------------------------------------------------- through verl


@pytest.fixture(scope="module")
def processors(tmp_path_factory: pytest.TempPathFactory) -> dict:
    base = tmp_path_factory.mktemp("qwen_processors")
    return {
        "qwen2_vl": load_qwen_vl_processor(save_qwen2_vl_processor(base / "qwen2_vl")),
        "qwen2_5_vl": load_qwen_vl_processor(save_qwen2_5_vl_processor(base / "qwen2_5_vl")),
    }


@pytest.mark.parametrize(
    ("name", "model", "data_source"),
    [
        ("coco", "qwen2_5_vl", "coco_detection"),
        ("ocr", "qwen2_vl", "pageocr"),
        ("refcoco", "qwen2_vl", "refcoco"),
        ("pixmo", "qwen2_vl", "pixmo_count"),
    ],
)
def test_rows_load_in_verl_rlhf_dataset(built, processors, tmp_path, name, model, data_source):
    processor = processors[model]
    path = built["paths"][name]
    dataset = load_rlhf_dataset(path, processor, tmp_path / "verl_cache")
    rows = rows_of(path)
    assert len(dataset) == len(rows)  # nothing filtered
    for i in (0, len(rows) - 1):
        item = dataset[i]
        assert item["data_source"] == data_source and item["extra_info"]["index"] == i
        assert item["reward_model"]["ground_truth"] == rows[i]["reward_model"]["ground_truth"]
        content = item["raw_prompt"][0]["content"]
        assert [c["type"] for c in content][:1] == ["image"] and sum(c["type"] == "image" for c in content) == 1
        text = "".join(c.get("text", "") for c in content if c["type"] == "text")
        assert "<image>" + text == rows[i]["prompt"][0]["content"]
        # what verl's agent loop does next: vision info, chat template, processor
        images, rendered, inputs = vision_inputs(dataset, item, processor)
        assert len(images) == rendered.count("<|vision_start|><|image_pad|><|vision_end|>") == 1
        (grid,) = inputs["image_grid_thw"].tolist()
        assert image_pad_runs(inputs["input_ids"][0].tolist()) == [grid[0] * grid[1] * grid[2] // 4]
        # the image verl hands the processor has the stored pixel bounds (or qwen_vl_utils' defaults) applied to
        # the real image's size, and the processor keeps that size (grid rows x cols of 14-pixel patches)
        w, h = rows[i]["extra_info"]["image_size"]
        limit = rows[i]["images"][0].get("max_pixels")
        assert images[0].width % 28 == 0 and images[0].height % 28 == 0
        assert (images[0].height, images[0].width) == (grid[1] * 14, grid[2] * 14)
        assert images[0].width * images[0].height <= (limit or 16384 * 28 * 28)
        assert abs(images[0].width / images[0].height - w / h) < 0.15 * (w / h)


# ---------------------------------------------------------------------------------------------- bad records


def _coco_with(shared_data: Path, tmp_path: Path, mutate) -> Path:
    data = coco(shared_data)
    mutate(data)
    path = tmp_path / "instances.json"
    path.write_text(json.dumps(data))
    return path


BAD_COCO = [
    (lambda d: d["annotations"][3].__setitem__("bbox", [1, 2, "wide", 4]), r"annotations\[3\].*field 'bbox'"),
    (lambda d: d["annotations"][5].__setitem__("category_id", 999), r"annotations\[5\].*field 'category_id'"),
    (lambda d: d["annotations"][0].__setitem__("bbox", [600, 10, 300, 20]), r"annotations\[0\].*outside"),
    (lambda d: d["images"][2].__setitem__("width", 1000), r"images\[2\].*field 'width'/'height'"),
    (lambda d: d["images"][1].__setitem__("file_name", "nope.jpg"), r"images\[1\].*field 'file_name'.*not found"),
    (lambda d: d["annotations"][1].pop("bbox"), r"annotations\[1\]: missing field 'bbox'"),
]


@pytest.mark.parametrize(("mutate", "message"), BAD_COCO)
def test_bad_coco_records_exit_2(shared_data, tmp_path, capsys, mutate, message):
    src = _coco_with(shared_data, tmp_path, mutate)
    out = tmp_path / "out.parquet"
    code = build("coco-detection", "--annotations", str(src), "--image-root", str(shared_data / "coco" / "images"),
                 "--output", str(out))  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2 and not out.exists()
    assert "instances.json" in err and re.search(message, err), err
    assert "Traceback" not in err


def test_bad_records_of_every_builder_exit_2(built, shared_data, tmp_path, capsys):
    def fails(pattern: str, *argv: str) -> None:
        out = tmp_path / "bad.parquet"
        assert build(*argv, "--output", str(out)) == 2
        err = capsys.readouterr().err
        assert re.search(pattern, err) and not out.exists(), err

    # pageocr: a missing text file, a size that disagrees with the image
    pages = [json.loads(x) for x in (shared_data / "ocr" / "pages.jsonl").read_text().splitlines() if x]
    bad = tmp_path / "ocr"
    bad.mkdir()
    (bad / "images").symlink_to(shared_data / "ocr" / "images")
    rows = [dict(p, text=str(shared_data / "ocr" / p["text"])) for p in pages]
    rows[2]["text_file"] = "missing.txt"
    (bad / "pages.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    fails(r"pages\.jsonl:3: field 'text_file': text file not found", "pageocr", "--input", str(bad / "pages.jsonl"))
    rows[2].pop("text_file")
    rows[4]["height"] = 10
    (bad / "pages.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    fails(r"pages\.jsonl:5: field 'width'/'height'", "pageocr", "--input", str(bad / "pages.jsonl"))

    # refcoco: a ref whose annotation is not in instances.json
    refer = tmp_path / "refer"
    refs = write_refer_fixture(shared_data, refer)
    refs[4]["ann_id"] = 12345
    with open(refer / "refs(unc).p", "wb") as handle:
        pickle.dump(refs, handle)
    fails(r"refs\(unc\)\.p\[4\]: field 'ann_id'", "refcoco", "--refer-dir", str(refer),
          "--image-root", str(shared_data / "coco" / "images"))  # fmt: skip
    fails(r"refs\(google\)\.p: not found", "refcoco", "--refer-dir", str(refer), "--split-by", "google")

    # pixmo: a count that disagrees with the points, a point outside the image, no points
    src = tmp_path / "pixmo.jsonl"
    for k, change, pattern in (
        (1, {"count": 99}, r"pixmo\.jsonl:2: field 'count': 99 but"),
        (0, {"points": [{"x": 5000, "y": 1}]}, r"pixmo\.jsonl:1: field points\[0\]"),
        (2, {"points": None}, r"pixmo\.jsonl:3: field 'points': missing"),
        (0, {"points": [{"x": "a", "y": 1}]}, r"pixmo\.jsonl:1: field points\[0\]: expected a point"),
    ):
        rows = [dict(r) for r in built["pixmo_rows"]]
        rows[k].update(change)
        if "points" in change and change["points"] is not None:
            rows[k]["count"] = len(change["points"])
        src.write_text("".join(json.dumps(r) + "\n" for r in rows))
        fails(pattern, "pixmo-count", "--input", str(src), "--image-root", str(built["tmp"] / "pixmo_images"))
