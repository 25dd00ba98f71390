import csv
import json

import datasets
import pytest

from reward_model.pairs import FIELDS, PairManifestError, load_pairs, read_rows, write_pairs


def pair(index: int, **overrides) -> dict:
    row = {
        "pair_id": f"p{index}",
        "prompt": "two people: a person with short red hair; a person with long blue hair",
        "references": ["refs/one.png", "refs/two.png"],
        "video_a": f"videos/{index}_a.mp4",
        "video_b": f"videos/{index}_b.mp4",
        "label": "a",
        "source": "synthetic",
        "distortion": "swap",
        "severity": 0.7,
        "severity_other": 0.0,
        "num_frames": 8,
        "fps": 8.0,
    }
    row.update(overrides)
    return row


def touch_files(folder, rows):
    for row in rows:
        for relative in [row["video_a"], row["video_b"], *row["references"]]:
            path = folder / relative
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(b"x")


def write_jsonl(path, lines):
    path.write_text("".join(line + "\n" for line in lines))


def test_round_trip_resolves_paths_against_the_manifest_folder(tmp_path):
    rows = [pair(1), pair(2, label="tie", distortion="clean", severity=None, severity_other=None,
                         identity_ids=[3, 4])]
    manifest = write_pairs(tmp_path / "data" / "train.jsonl", rows)
    touch_files(tmp_path / "data", rows)
    dataset = load_pairs(manifest, check_files=True)
    assert isinstance(dataset, datasets.Dataset) and len(dataset) == 2
    assert set(FIELDS) <= set(dataset.column_names) and "identity_ids" in dataset.column_names
    first, second = dataset[0], dataset[1]
    assert first["video_a"] == str(tmp_path / "data" / "videos" / "1_a.mp4")
    assert first["references"] == [str(tmp_path / "data" / "refs" / "one.png"), str(tmp_path / "data" / "refs" / "two.png")]
    assert first["severity"] == 0.7 and first["num_frames"] == 8 and first["identity_ids"] is None
    assert second["label"] == "tie" and second["severity"] is None and second["identity_ids"] == [3, 4]
    assert dataset.features["severity"] == datasets.Value("float64")


def test_absolute_paths_are_kept(tmp_path):
    rows = [pair(1, video_a=str(tmp_path / "elsewhere" / "a.mp4"))]
    manifest = write_pairs(tmp_path / "m.jsonl", rows)
    assert read_rows(manifest)[0]["video_a"] == str(tmp_path / "elsewhere" / "a.mp4")


def test_bad_label_names_file_line_and_field(tmp_path):
    manifest = tmp_path / "train.jsonl"
    # Line 2 is blank: rows are numbered by line, so the bad row is on line 3.
    write_jsonl(manifest, [json.dumps(pair(1)), "", json.dumps(pair(2, label="x"))])
    with pytest.raises(PairManifestError) as error:
        load_pairs(manifest)
    assert str(error.value) == "train.jsonl row 3, field 'label': expected 'a', 'b' or 'tie', got 'x'"


@pytest.mark.parametrize("overrides, field", [
    ({"severity": 1.5}, "severity"),
    ({"severity": True}, "severity"),
    ({"severity_other": "high"}, "severity_other"),
    ({"source": "crowd"}, "source"),
    ({"references": "one.png"}, "references"),
    ({"references": ["ok.png", ""]}, "references"),
    ({"video_b": ""}, "video_b"),
    ({"pair_id": 7}, "pair_id"),
    ({"num_frames": 0}, "num_frames"),
    ({"num_frames": 8.5}, "num_frames"),
    ({"fps": -1}, "fps"),
    ({"distortion": ""}, "distortion"),
])
def test_each_field_is_checked(tmp_path, overrides, field):
    manifest = tmp_path / "m.jsonl"
    write_jsonl(manifest, [json.dumps(pair(1)), json.dumps(pair(2, **overrides))])
    with pytest.raises(PairManifestError, match=rf"^m\.jsonl row 2, field '{field}': "):
        load_pairs(manifest)


def test_missing_field_duplicate_id_and_broken_lines(tmp_path):
    manifest = tmp_path / "m.jsonl"
    row = pair(1)
    del row["fps"]
    write_jsonl(manifest, [json.dumps(row)])
    with pytest.raises(PairManifestError, match="m.jsonl row 1, field 'fps': missing"):
        load_pairs(manifest)
    write_jsonl(manifest, [json.dumps(pair(1)), json.dumps(pair(1))])
    with pytest.raises(PairManifestError, match="row 2, field 'pair_id': duplicate of row 1"):
        load_pairs(manifest)
    write_jsonl(manifest, [json.dumps(pair(1)), "{not json"])
    with pytest.raises(PairManifestError, match="m.jsonl row 2: invalid JSON"):
        load_pairs(manifest)
    write_jsonl(manifest, [json.dumps([1, 2])])
    with pytest.raises(PairManifestError, match="row 1: expected an object"):
        load_pairs(manifest)
    write_jsonl(manifest, [])
    with pytest.raises(PairManifestError, match="no rows"):
        load_pairs(manifest)


def test_check_files_names_the_missing_file(tmp_path):
    rows = [pair(1), pair(2)]
    manifest = write_pairs(tmp_path / "m.jsonl", rows)
    touch_files(tmp_path, rows)
    (tmp_path / "refs" / "two.png").unlink()
    assert len(load_pairs(manifest)) == 2  # without check_files the rows load
    with pytest.raises(PairManifestError, match=r"m\.jsonl row 1, field 'references\[1\]': file not found: .*two\.png"):
        load_pairs(manifest, check_files=True)
    touch_files(tmp_path, rows)
    (tmp_path / "videos" / "2_b.mp4").unlink()
    with pytest.raises(PairManifestError, match=r"row 2, field 'video_b': file not found"):
        load_pairs(manifest, check_files=True)


def write_csv(path, header, rows):
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)


def test_native_csv_parses_lists_numbers_and_nulls(tmp_path):
    header = list(FIELDS)
    rows = [
        ["p1", "prompt one", "refs/a.png;refs/b.png", "v/1a.mp4", "v/1b.mp4", "b", "human", "", "", "", "8", "24"],
        ["p2", "prompt two", '["refs/c.png"]', "v/2a.mp4", "v/2b.mp4", "tie", "synthetic", "clean", "", "", "16", "8.0"],
    ]
    write_csv(tmp_path / "pairs.csv", header, rows)
    dataset = load_pairs(tmp_path / "pairs.csv")
    assert dataset[0]["references"] == [str(tmp_path / "refs" / "a.png"), str(tmp_path / "refs" / "b.png")]
    assert dataset[0]["distortion"] is None and dataset[0]["severity"] is None
    assert dataset[0]["num_frames"] == 8 and dataset[0]["fps"] == 24.0
    assert dataset[1]["references"] == [str(tmp_path / "refs" / "c.png")] and dataset[1]["label"] == "tie"
    rows[1][10] = "eight"
    write_csv(tmp_path / "pairs.csv", header, rows)
    with pytest.raises(PairManifestError, match="pairs.csv row 2, field 'num_frames': expected a number"):
        load_pairs(tmp_path / "pairs.csv")


VIDEOALIGN_HEADER = ["path_A", "path_B", "prompt", "VQ", "MQ", "TA", "fps_A", "num_frames_A", "fps_B", "num_frames_B"]


def test_videoalign_csv_loads_without_conversion(tmp_path):
    write_csv(tmp_path / "data.csv", VIDEOALIGN_HEADER, [
        ["./videos/example_1_A.mp4", "./videos/example_1_B.mp4", "a cat", "A", "B", "same", "24", "49", "24", "81"],
        ["./videos/example_2_A.mp4", "./videos/example_2_B.mp4", "a dog", "B", "B", "A", "16", "33", "16", "33"],
    ])
    with pytest.raises(PairManifestError, match="several preference columns"):
        load_pairs(tmp_path / "data.csv")
    dataset = load_pairs(tmp_path / "data.csv", label_column="TA")
    assert dataset["label"] == ["tie", "a"]
    first = dataset[0]
    assert first["video_a"] == str(tmp_path / "videos" / "example_1_A.mp4")
    assert first["pair_id"] == "data-1" and first["source"] == "human" and first["references"] == []
    assert first["num_frames"] == 49 and first["fps"] == 24.0 and first["distortion"] is None
    assert load_pairs(tmp_path / "data.csv", label_column="VQ")["label"] == ["a", "b"]


def test_videoalign_csv_with_one_label_column_and_references(tmp_path):
    write_csv(tmp_path / "ids.csv", ["path_A", "path_B", "prompt", "label", "references"], [
        ["a1.mp4", "b1.mp4", "two people", "same", "r/one.png;r/two.png"],
        ["a2.mp4", "b2.mp4", "two people", "C", ""],
    ])
    with pytest.raises(PairManifestError, match="ids.csv row 2, field 'label': expected 'A', 'B' or 'same', got 'C'"):
        load_pairs(tmp_path / "ids.csv")
    write_csv(tmp_path / "ids.csv", ["path_A", "path_B", "prompt", "MQ"], [["a1.mp4", "", "p", "A"]])
    with pytest.raises(PairManifestError, match="ids.csv row 1, field 'path_B'"):
        load_pairs(tmp_path / "ids.csv")
    write_csv(tmp_path / "ids.csv", ["path_A", "path_B", "prompt", "MQ", "references"],
              [["a1.mp4", "b1.mp4", "p", "b", "r/one.png;r/two.png"]])
    row = load_pairs(tmp_path / "ids.csv")[0]
    assert row["label"] == "b" and row["num_frames"] is None and row["fps"] is None
    assert row["references"] == [str(tmp_path / "r" / "one.png"), str(tmp_path / "r" / "two.png")]


def test_json_list_and_parquet_manifests(tmp_path):
    (tmp_path / "pairs.json").write_text(json.dumps([pair(1), pair(2, label="b")]))
    assert load_pairs(tmp_path / "pairs.json")["label"] == ["a", "b"]
    (tmp_path / "bad.json").write_text(json.dumps([pair(1), pair(2, fps="fast")]))
    with pytest.raises(PairManifestError, match="bad.json row 2, field 'fps'"):
        load_pairs(tmp_path / "bad.json")
    datasets.Dataset.from_list([pair(1), pair(2, label="tie")]).to_parquet(str(tmp_path / "pairs.parquet"))
    loaded = load_pairs(tmp_path / "pairs.parquet")
    assert loaded["label"] == ["a", "tie"] and loaded[0]["video_b"] == str(tmp_path / "videos" / "1_b.mp4")


def test_unknown_types_and_missing_manifests(tmp_path):
    (tmp_path / "pairs.txt").write_text("")
    with pytest.raises(PairManifestError, match="unknown manifest type"):
        load_pairs(tmp_path / "pairs.txt")
    with pytest.raises(PairManifestError, match="not found"):
        load_pairs(tmp_path / "absent.jsonl")


def test_write_pairs_validates_before_writing(tmp_path):
    with pytest.raises(PairManifestError, match="out.jsonl row 2, field 'label'"):
        write_pairs(tmp_path / "out.jsonl", [pair(1), pair(2, label="B")])
    assert not (tmp_path / "out.jsonl").exists()
    with pytest.raises(ValueError, match="jsonl"):
        write_pairs(tmp_path / "out.csv", [pair(1)])
