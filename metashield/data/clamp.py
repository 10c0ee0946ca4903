"""ClaMP, Classification of Malware with PE headers (Kumar, Kuppusamy, Aghila, JKSU-CIS 2019): the integrated
feature set ``ClaMP_Integrated-5184.csv`` of Windows PE files labelled malware (1) or benign (0).

The columns are those written by the authors' ``scripts/integrated_features_extraction.py`` (repository
``urwithajit9/ClaMP``): raw DOS, file and optional header fields, 0/1 flags, and derived features. Several
header fields are stored as a validity flag rather than a value (``CreationYear``, ``ImageBase``,
``SectionAlignment``, ``FileAlignment``, ``SizeOfImage``, ``SizeOfHeaders``, ``LoaderFlags``); the schema
follows what the file holds. The file has 2 blank lines (3203 and 3830), which are skipped.

Threat model (``THREAT_SCHEMA``): an attacker who edits a PE file keeps it loadable and keeps its payload.
The fields one would freeze first, ``e_magic``, the machine type and the optional-header magic, are not in
the file. Frozen here: the executable-image and DLL flags, the two alignment-validity flags and the
subsystem, each because changing it makes the Windows loader refuse or mis-run the image. Everything else
(linker and OS versions, sizes, checksum, section names, packing, entropy, version info) is set by the
toolchain or a packer and stays mutable within its documented range. Cross-column rules (sections named
standard plus others equal ``NumberOfSections``; ``packer`` is 0 exactly for ``NoPacker``) are not expressible
in a per-column schema and are not enforced.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import pandas as pd

from metashield.data.schema import FeatureSpec, ThreatSchema
from metashield.data.strict_csv import check_header, number_column, read_csv_cells
from metashield.data.types import BENIGN, TabularData

logger = logging.getLogger(__name__)

CLAMP_CSV = "ClaMP_Integrated-5184.csv"

_FH_FLAGS = tuple(f"FH_char{i}" for i in range(15))
_DLL_FLAGS = tuple(f"OH_DLLchar{i}" for i in range(11))
_COLUMN_NAMES = """
    e_cblp e_cp e_cparhdr e_maxalloc e_sp e_lfanew NumberOfSections CreationYear {fh} MajorLinkerVersion
    MinorLinkerVersion SizeOfCode SizeOfInitializedData SizeOfUninitializedData AddressOfEntryPoint
    BaseOfCode BaseOfData ImageBase SectionAlignment FileAlignment MajorOperatingSystemVersion
    MinorOperatingSystemVersion MajorImageVersion MinorImageVersion MajorSubsystemVersion
    MinorSubsystemVersion SizeOfImage SizeOfHeaders CheckSum Subsystem {dll} SizeOfStackReserve
    SizeOfStackCommit SizeOfHeapReserve SizeOfHeapCommit LoaderFlags sus_sections non_sus_sections packer
    packer_type E_text E_data filesize E_file fileinfo class
""".format(fh=" ".join(_FH_FLAGS), dll=" ".join(_DLL_FLAGS))
COLUMNS: tuple[str, ...] = tuple(_COLUMN_NAMES.split())
"""The 70 columns in file order: 69 features and the label ``class``."""

LABEL = "class"
FEATURES: tuple[str, ...] = COLUMNS[:-1]
MALWARE = "malware"
"""Family of every malware row (ClaMP has no family labels)."""

CATEGORICAL: tuple[str, ...] = ("packer_type", "Subsystem")
"""``packer_type`` is the PEiD signature name (40 values); ``Subsystem`` is an enumeration (native, Windows
GUI, console, EFI, boot application, ...), whose numeric order means nothing."""

REAL_COLUMNS: tuple[str, ...] = ("E_text", "E_data", "E_file")
"""Shannon entropies in bits per byte; every other numeric column holds whole numbers."""

_LOG_SCALED_NAMES = """
    e_cblp e_cp e_cparhdr e_sp SizeOfCode SizeOfInitializedData SizeOfUninitializedData AddressOfEntryPoint
    BaseOfCode BaseOfData MajorImageVersion MinorImageVersion CheckSum SizeOfStackReserve SizeOfStackCommit
    SizeOfHeapReserve SizeOfHeapCommit filesize
"""
LOG_SCALED: tuple[str, ...] = tuple(_LOG_SCALED_NAMES.split())
"""Byte sizes, addresses and near-constant fields with rare huge values.

Sizes, addresses and the file size span 4-9 orders of magnitude (SizeOfCode 0 to 3.6e9 bytes, filesize
1.5 kB to 166 MB, AddressOfEntryPoint up to 20x its 99th percentile). The DOS-stub fields, image versions
and CheckSum are nearly constant, with rare values 100-6,700x their 99th percentile (packers and corrupt
headers write arbitrary words there). Without log1p a single row would set their standardised scale.
Versions, counts and entropies stay within a small range and stay linear.
"""

_WORD = 2**16 - 1
_DWORD = 2**32 - 1


def _ranged(upper: int, why: str) -> FeatureSpec:
    """A mutable whole number in [0, upper]."""
    return FeatureSpec(lower=0, upper=upper, integer=True, why=why)


def _flag(why: str, *, mutable: bool = True) -> FeatureSpec:
    return FeatureSpec(lower=0, upper=1, integer=True, mutable=mutable, why=why)


_DOS_STUB = "a WORD of the DOS header, which the Windows loader ignores"
_SIZE = "a DWORD byte count or relative address of the optional header"
_VERSION = "a WORD version number that the loader does not check"
_RESERVE = "bytes; a DWORD in PE32 and a ULONGLONG in PE32+ images (the file does not say which)"
_ENTROPY = "Shannon entropy of the bytes, in bits per byte"

THREAT_SCHEMA = ThreatSchema(
    features={
        **{c: _ranged(_WORD, _DOS_STUB) for c in ("e_cblp", "e_cp", "e_cparhdr", "e_maxalloc", "e_sp")},
        "e_lfanew": _ranged(_DWORD, "file offset of the PE header, a 32-bit field"),
        "NumberOfSections": _ranged(_WORD, "a WORD count of section headers"),
        "CreationYear": _flag("1 when the linker timestamp falls in 1980-2015; the timestamp is free to set"),
        **{c: _flag("a FILE_HEADER characteristics bit") for c in _FH_FLAGS},
        "FH_char1": _flag(
            "IMAGE_FILE_EXECUTABLE_IMAGE: the loader refuses an image without it", mutable=False
        ),
        "FH_char12": _flag(
            "IMAGE_FILE_DLL: decides whether the image runs as a program or is mapped as a library "
            "with DllMain; flipping it breaks the entry point",
            mutable=False,
        ),
        "MajorLinkerVersion": _ranged(255, "a BYTE written by the linker, not checked by the loader"),
        "MinorLinkerVersion": _ranged(255, "a BYTE written by the linker, not checked by the loader"),
        **{
            c: _ranged(_DWORD, _SIZE)
            for c in (
                "SizeOfCode",
                "SizeOfInitializedData",
                "SizeOfUninitializedData",
                "AddressOfEntryPoint",
                "BaseOfCode",
                "BaseOfData",
            )
        },
        "ImageBase": _flag("1 for the default bases 0x10000, 0x400000, 0x10000000; relocation makes it free"),
        "SectionAlignment": _flag(
            "1 when SectionAlignment >= FileAlignment, which the PE format requires of a loadable image",
            mutable=False,
        ),
        "FileAlignment": _flag(
            "1 when FileAlignment is in 512-64K (or equals a sub-page SectionAlignment), as the PE format "
            "requires of a loadable image",
            mutable=False,
        ),
        **{
            c: _ranged(_WORD, _VERSION)
            for c in ("MajorOperatingSystemVersion", "MinorOperatingSystemVersion")
            + ("MajorImageVersion", "MinorImageVersion")
        },
        **{
            c: _ranged(_WORD, "a WORD; the loader refuses only values above the running Windows version")
            for c in ("MajorSubsystemVersion", "MinorSubsystemVersion")
        },
        "SizeOfImage": _flag("1 when SizeOfImage is a multiple of SectionAlignment; the loader rounds it up"),
        "SizeOfHeaders": _flag("1 when SizeOfHeaders is a multiple of FileAlignment; real images break it"),
        "CheckSum": _ranged(_DWORD, "a DWORD the loader checks only for drivers and boot-time DLLs"),
        "Subsystem": FeatureSpec(
            mutable=False,
            why="selects the environment the loader runs the image in (native, Windows GUI, console, EFI); "
            "only the GUI/console switch keeps a program working and it opens a console window for the "
            "victim, and a schema cannot allow one pair only",
        ),
        **{c: _flag("an optional-header DllCharacteristics bit, a linker option") for c in _DLL_FLAGS},
        **{
            c: FeatureSpec(lower=0, integer=True, why=_RESERVE)
            for c in ("SizeOfStackReserve", "SizeOfStackCommit", "SizeOfHeapReserve", "SizeOfHeapCommit")
        },
        "LoaderFlags": _flag("1 when the reserved LoaderFlags field is 0; the loader ignores it"),
        "sus_sections": _ranged(_WORD, "sections with a non-standard name, at most NumberOfSections"),
        "non_sus_sections": _ranged(
            9,
            "how many of the 9 standard names (.text .data .rdata .idata .edata .rsrc .bss .crt .tls) occur",
        ),
        "packer": _flag("1 when a PEiD signature matches; packing is the attacker's choice"),
        "packer_type": FeatureSpec(why="the PEiD signature name; the attacker may pack, unpack or repack"),
        "E_text": FeatureSpec(lower=0.0, upper=8.0, why=_ENTROPY + " of the .text section"),
        "E_data": FeatureSpec(lower=0.0, upper=8.0, why=_ENTROPY + " of the .data section"),
        "filesize": FeatureSpec(lower=0, integer=True, why="bytes; an overlay or padding grows it freely"),
        "E_file": FeatureSpec(lower=0.0, upper=8.0, why=_ENTROPY + " of the whole file"),
        "fileinfo": _flag("1 when a version-information resource is present; a resource editor adds one"),
    },
    source="Microsoft PE/COFF specification field sizes and rules; ClaMP integrated_features_extraction.py",
)
"""ClaMP threat model: 5 of the 69 columns are frozen (FH_char1, FH_char12, SectionAlignment, FileAlignment,
Subsystem); header fields are bounded by their WORD/DWORD/BYTE sizes, flags by {0, 1}, entropies by [0, 8]."""


def read_clamp_csv(path: str | os.PathLike) -> TabularData:
    """A CSV file in the ``ClaMP_Integrated`` format as ``TabularData`` (family ``malware`` or ``BENIGN``).

    Blank lines are skipped. Raises ``DataFormatError`` naming the file, line and column for another
    header, a field that is not a number (or not a whole number outside the entropy columns), an empty
    ``packer_type`` or a label other than 0 and 1.
    """
    source = str(path)
    table = read_csv_cells(Path(path).read_bytes(), source, skip_blank_lines=True)
    check_header(table, COLUMNS)
    columns: dict[str, np.ndarray] = {}
    for position, name in enumerate(FEATURES):
        if name == "packer_type":
            empty = np.array([not cell.strip() for cell in table.cells[:, position]])
            if empty.any():
                raise table.error(int(np.flatnonzero(empty)[0]), position, "empty, expected a packer name")
            columns[name] = table.cells[:, position]
            continue
        values = number_column(table, position, integer=name not in REAL_COLUMNS)
        columns[name] = values if name in REAL_COLUMNS else values.astype(np.int64)
    label = table.cells[:, COLUMNS.index(LABEL)]
    unknown = (label != "0") & (label != "1")
    if unknown.any():
        row = int(np.flatnonzero(unknown)[0])
        raise table.error(row, COLUMNS.index(LABEL), f"{label[row]!r} is not 1 (malware) or 0 (benign)")
    family = np.where(label == "1", MALWARE, BENIGN).astype(object)
    logger.info(
        "%s: %d rows (%d malware, %d benign), %d blank lines skipped",
        source,
        len(family),
        int((family == MALWARE).sum()),
        int((family == BENIGN).sum()),
        table.blank_lines,
    )
    return TabularData(
        frame=pd.DataFrame(columns),
        family=family,
        categorical=list(CATEGORICAL),
        log_scaled=list(LOG_SCALED),
        name="clamp",
        schema=THREAT_SCHEMA,
    )


def load_clamp(folder: str | os.PathLike) -> TabularData:
    """ClaMP from ``folder`` holding ``ClaMP_Integrated-5184.csv``."""
    return read_clamp_csv(Path(folder) / CLAMP_CSV)
