"""Mal-API-2019 loader and SequenceData: hand-made zips (valid and malformed) in the published layout, and the
real files when the shared data is present."""

from __future__ import annotations

import re
import zipfile
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from conftest import shared_data

from metashield.data import SequenceData, get_spec
from metashield.data.archive import read_zip_member
from metashield.data.download import file_sha256, load_dataset
from metashield.data.errors import DataFormatError
from metashield.data.mal_api import (
    CALLS_MEMBER,
    MAL_API_CALLS,
    MAL_API_INDEX,
    MAL_API_TYPES,
    TYPES_MEMBER,
    load_mal_api,
)

INDEX = "a=0\nb=1\n\nd=3\n"  # like the real file, a blank line stands for an id without a name (2)
CALLS = "1,0,3\n3\n"
TYPES = "Adware\nWorms\n"


def mal_api_folder(folder: Path, calls: str = CALLS, types: str = TYPES, index: str = INDEX) -> Path:
    """A folder in the published layout: each text file zipped under its member name, the index bare."""
    folder.mkdir(parents=True, exist_ok=True)
    for zip_name, member, text in [
        (MAL_API_CALLS, CALLS_MEMBER, calls),
        (MAL_API_TYPES, TYPES_MEMBER, types),
    ]:
        with zipfile.ZipFile(folder / zip_name, "w", zipfile.ZIP_DEFLATED) as archive:
            archive.writestr(member, text)
    (folder / MAL_API_INDEX).write_text(index, encoding="utf-8")
    return folder


def test_valid_fixture_loads_exact_arrays(tmp_path: Path) -> None:
    data = load_mal_api(mal_api_folder(tmp_path))
    assert [seq.tolist() for seq in data.calls] == [[1, 0, 3], [3]]
    assert all(seq.dtype == np.int32 for seq in data.calls)
    assert data.family.tolist() == ["Adware", "Worms"] and data.family.dtype == object
    assert data.vocab == ["a", "b", "<unnamed 2>", "d"]
    assert data.name == "mal-api"
    assert data.lengths.tolist() == [3, 1] and data.lengths.dtype == np.int64
    assert data.tokens(2).tolist() == [[2, 1], [4, 0]]
    bag = data.bag_of_calls()
    assert list(bag.frame.columns) == ["calls:a", "calls:b", "calls:<unnamed 2>", "calls:d"]
    assert bag.frame.to_numpy().tolist() == [[1, 1, 0, 1], [0, 0, 0, 1]]
    assert bag.log_scaled == list(bag.frame.columns) and bag.family.tolist() == ["Adware", "Worms"]
    assert bag.schema.immutable == [] and bag.name == "mal-api"
    picked = data.subset(np.array([False, True]))
    assert [seq.tolist() for seq in picked.calls] == [[3]] and picked.family.tolist() == ["Worms"]


def test_windows_line_ends_and_a_missing_final_newline_are_accepted(tmp_path: Path) -> None:
    folder = mal_api_folder(tmp_path, calls="1,0,3\r\n3", types="Adware\r\nWorms", index="a=0\r\nb=1\r\nd=3")
    data = load_mal_api(folder)
    assert [seq.tolist() for seq in data.calls] == [[1, 0, 3], [3]]
    assert data.family.tolist() == ["Adware", "Worms"]


@pytest.mark.parametrize(
    ("calls", "match"),
    [
        ("1,0,3\n3,x1,1\n", r"line 2, call 2: 'x1' is not an API id, expected 1 to 9 digits"),
        ("1,0,3\n3,-1\n", r"line 2, call 2: '-1' is not an API id"),
        ("1,0,3\n3,1,\n", r"line 2, call 3: '' is not an API id"),
        ("1,0,3\n1234567890\n", r"line 2, call 1: '1234567890' is not an API id"),
        ("1,0,3\n\n", r"line 2: empty line, expected comma-separated API ids"),
        ("1,0,2\n3\n", r"line 1, call 3: API id 2 is not named in ApiIndex.txt"),
        ("1,0,3\n3,3,4\n", r"line 2, call 3: API id 4 is not named in ApiIndex.txt"),
        ("", r"no lines, expected one API-call sequence per line"),
    ],
)
def test_malformed_calls_name_file_line_and_call(tmp_path: Path, calls: str, match: str) -> None:
    folder = mal_api_folder(tmp_path, calls=calls)
    source = re.escape(f"{folder / MAL_API_CALLS}[{CALLS_MEMBER}]")
    with pytest.raises(DataFormatError, match=f"{source}: {match}"):
        load_mal_api(folder)


@pytest.mark.parametrize(
    ("types", "match"),
    [
        ("Adware\n", r"ends after line 1, expected 2 lines, one per line of .*100_calls.txt"),
        ("Adware\nWorms\nVirus\n", r"line 3 is past the last of the 2 lines of .*100_calls.txt"),
        ("Adware\n\n", r"line 2: '', expected a type name"),
        ("Adware\nWorms \n", r"line 2: 'Worms ', expected a type name without spaces"),
    ],
)
def test_malformed_types_name_file_and_line(tmp_path: Path, types: str, match: str) -> None:
    folder = mal_api_folder(tmp_path, types=types)
    source = re.escape(f"{folder / MAL_API_TYPES}[{TYPES_MEMBER}]")
    with pytest.raises(DataFormatError, match=f"{source}: {match}"):
        load_mal_api(folder)


def test_types_that_are_not_utf8_name_the_line(tmp_path: Path) -> None:
    folder = mal_api_folder(tmp_path)
    with zipfile.ZipFile(folder / MAL_API_TYPES, "w") as archive:
        archive.writestr(TYPES_MEMBER, b"Adware\nW\xffrms\n")
    with pytest.raises(DataFormatError, match=r"100_types.txt\]: line 2: not UTF-8 text"):
        load_mal_api(folder)


@pytest.mark.parametrize(
    ("index", "match"),
    [
        ("a=0\nb1\n", r"line 2: 'b1' is not name=id"),
        ("a=0\nb=x\n", r"line 2: 'b=x' is not name=id"),
        ("a=0\nb = 1\n", r"line 2: 'b = 1' is not name=id"),
        ("a=0\nb=1\nc=1\nd=3\n", r"line 3: id 1 repeats, expected a new id \('b' has it\)"),
        ("a=0\nb=1\na=3\n", r"line 3: name 'a' repeats line 1, expected a new name"),
        ("a=0\nb=1\nd=100000\n", r"line 3: id 100000 is above the largest allowed, 99999"),
        ("\n\n", r"no name=id lines"),
    ],
)
def test_malformed_index_names_file_and_line(tmp_path: Path, index: str, match: str) -> None:
    folder = mal_api_folder(tmp_path, index=index)
    with pytest.raises(DataFormatError, match=re.escape(str(folder / MAL_API_INDEX)) + ": " + match):
        load_mal_api(folder)


@pytest.mark.parametrize(
    ("calls", "family", "vocab", "match"),
    [
        ([np.array([0, 2])], ["x"], ["a", "b"], r"toy: row 0 has token id 2, outside \[0, 2\)"),
        ([np.array([0]), np.array([-1])], ["x", "y"], ["a"], r"row 1 has token id -1, outside \[0, 1\)"),
        ([np.array([0]), np.array([], dtype=int)], ["x", "y"], ["a"], r"row 1 is an empty sequence"),
        ([np.array([0])], ["x", "y"], ["a"], r"toy: 1 sequences but 2 labels"),
        ([np.array([0.0])], ["x"], ["a"], r"row 0 is float64 of shape \(1,\), expected 1-d ids"),
        ([np.array([0])], ["x"], ["a", "a"], r"vocab names \['a'\] more than once"),
    ],
)
def test_sequence_data_rejects_bad_rows(
    calls: list[np.ndarray], family: list[str], vocab: list[str], match: str
) -> None:
    with pytest.raises(ValueError, match=match):
        SequenceData(calls=calls, family=np.array(family, dtype=object), vocab=vocab, name="toy")


def test_sequence_data_subset_and_tokens_check_their_arguments() -> None:
    data = SequenceData([np.array([0, 1])], np.array(["x"], dtype=object), ["a", "b"], "toy")
    with pytest.raises(ValueError, match=r"mask is int64 \(1,\), expected bool \(1,\)"):
        data.subset(np.array([0]))
    with pytest.raises(ValueError, match="max_len must be >= 1"):
        data.tokens(0)


# The real files ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def real() -> tuple[Path, SequenceData]:
    folder = shared_data() / "mal-api-2019-subset"
    return folder, load_mal_api(folder)


@pytest.mark.shared_data
def test_real_counts_match_source_md(real: tuple[Path, SequenceData]) -> None:
    _, data = real
    assert len(data.calls) == len(data.family) == 808
    types = ["Adware", "Backdoor", "Downloader", "Dropper", "Spyware", "Trojan", "Virus", "Worms"]
    assert Counter(data.family.tolist()) == dict.fromkeys(types, 101)
    ids = np.unique(np.concatenate(data.calls))
    assert len(ids) == 245 and ids.min() == 1 and ids.max() == 339
    lengths = data.lengths
    assert (lengths.min(), np.median(lengths), lengths.max()) == (12, 629, 1_485_396)
    # 340 names for ids 0-341: the index has no line for ids 109 and 111.
    assert len(data.vocab) == 342 and data.vocab[0] == "__process__" and data.vocab[341] == "ntshutdownsystem"
    assert [i for i, name in enumerate(data.vocab) if name.startswith("<unnamed")] == [109, 111]


@pytest.mark.shared_data
def test_real_rows_match_an_independent_parse(real: tuple[Path, SequenceData]) -> None:
    folder, data = real
    lines = read_zip_member(folder / MAL_API_CALLS, CALLS_MEMBER).split(b"\n")
    assert lines[-1] == b"" and len(lines) == 809
    shortest = int(data.lengths.argmin())
    for row in (0, shortest):
        assert data.calls[row].tolist() == [int(token) for token in lines[row].split(b",")]
    assert data.lengths.tolist() == [line.count(b",") + 1 for line in lines[:-1]]
    types = read_zip_member(folder / MAL_API_TYPES, TYPES_MEMBER).decode().split("\n")[:-1]
    assert data.family.tolist() == types


@pytest.mark.shared_data
def test_real_tokens_and_bag_of_calls(real: tuple[Path, SequenceData]) -> None:
    _, data = real
    tokens = data.tokens(16)
    assert tokens.shape == (808, 16) and tokens.dtype == np.int64
    assert tokens[0].tolist() == [293, 292, 293, 292] + [292] * 12  # the file starts "292,291,292,291,291"
    shortest = int(data.lengths.argmin())
    assert tokens[shortest].tolist() == [291, 292, 73, 206, 70, 196, 204, 216, 46, 214, 214, 214, 0, 0, 0, 0]
    assert (tokens[data.lengths >= 16] > 0).all()
    bag = data.bag_of_calls()
    assert bag.frame.shape == (808, 342)
    assert (bag.frame.sum(axis=1).to_numpy() == data.lengths).all()
    assert (bag.frame.astype(bool).sum(axis=0) > 0).sum() == 245
    assert bag.family.tolist() == data.family.tolist()


@pytest.mark.shared_data
def test_real_registry_pins_the_files(real: tuple[Path, SequenceData]) -> None:
    folder, _ = real
    spec = get_spec("mal-api")
    assert spec.folder == folder.name and spec.loader is load_mal_api
    for remote in spec.files:
        assert (folder / remote.name).stat().st_size == remote.size
        assert file_sha256(folder / remote.name) == remote.sha256
        (url,) = spec.urls[remote.name]
        assert url.startswith(
            "https://raw.githubusercontent.com/ocatak/malware_api_class/446f0c7643e93bda26599524d3cb796d9294cd91/"
        )
    assert "Çatak & Yazı" in spec.description and "808" in spec.description


@pytest.mark.shared_data
def test_real_load_dataset_through_the_mirror(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # load_dataset copies the files from the local mirror, checks size and sha256, then runs the loader.
    monkeypatch.setenv("METASHIELD_MIRROR", f"file://{shared_data()}")
    data = load_dataset("mal-api", home=tmp_path, progress=False)
    assert isinstance(data, SequenceData) and len(data.calls) == 808
