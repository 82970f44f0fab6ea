"""Omniglot (Lake et al., 2015) from its official archives, with the standard few-shot splits.

Introduced in lesson 04 (``notebooks/04_few_shot_classification.ipynb``).

Omniglot has 1623 handwritten characters from 50 alphabets, each drawn by 20 people, as
105x105 black-on-white PNGs in two archives: ``images_background.zip`` (30 alphabets, 964
characters) and ``images_evaluation.zip`` (20 alphabets, 659 characters), laid out as
``images_background/<alphabet>/<characterNN>/<drawing>.png``. :func:`load_omniglot` reads
them (or their extracted folders) from a directory, turns them into ink = 1 on paper = 0,
shrinks them by area averaging to ``image_size`` (28 by default, as in the few-shot
literature) and caches the result as one tensor file beside the archives.

**Character order.** Background alphabets sorted by name, their characters sorted by name,
then the evaluation alphabets and characters in the same way: character ``i`` is
``Omniglot.names[i]``. Drawings of a character are sorted by file name.

**Splits** (:meth:`Omniglot.classes`):

* ``"train"``, ``"val"``, ``"trainval"``, ``"test"``: the protocol of Vinyals et al. (2016),
  also used by Snell et al. (2017): 1200 characters for training (``"trainval"``: the first
  1028 are ``"train"``, the next 172 ``"val"``, the sizes of Snell et al.'s split) and the
  remaining 423 for ``"test"``, taken in the order above, so every test character comes from
  an evaluation alphabet. Each rotation by a multiple of 90 degrees is a class of its own
  (``rotations = 4``): 4800 training classes and 1692 test classes. The exact character list
  of Vinyals et al. was never published with the paper and the split files of Snell et al.
  are not shipped here, so the classes differ from theirs; the sizes and protocol are the same.
* ``"background"`` and ``"evaluation"``: Lake et al.'s alphabet split (use ``rotations = 1``
  for their protocol).

Class id ``c * rotations + r`` is character ``c`` turned ``r`` quarter turns.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import io
import os
import tempfile
import urllib.error
import urllib.request
import zipfile
import zlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType

import torch
import torch.nn.functional as F

from mlcourse.tasks.base import TaskBatch
from mlcourse.tasks.episodes import sample_bank_episodes

OMNIGLOT_URL_BASE = "https://raw.githubusercontent.com/brendenlake/omniglot/master/python/"
ARCHIVES = ("images_background.zip", "images_evaluation.zip")
# As recorded by TensorFlow Datasets (tensorflow_datasets/url_checksums/omniglot.txt), for
# files of 9 464 212 and 6 462 886 bytes.
OMNIGLOT_SHA256 = MappingProxyType(
    {
        "images_background.zip": "ad41ab679c8b5d90b271ef46be6987cc81211774a695c29dcc5367b2b26ee640",
        "images_evaluation.zip": "1f61a8f3366785b057fc117d9228e78a16e3d976c8953b2a10fcc74cf0609cee",
    }
)
VINYALS_TRAIN_CHARACTERS = 1028  # Snell et al.'s train split (+ 172 val = Vinyals's 1200)
VINYALS_VAL_CHARACTERS = 172
SPLITS = ("train", "val", "trainval", "test", "background", "evaluation")
CACHE_FORMAT = 1  # bump when the cache file's contents change
DOWNLOAD_CHUNK_BYTES = 1 << 20
INK_LEVELS = 255  # the cache stores ink quantised to uint8
CHARACTERS_PER_CHUNK = 64  # characters shrunk at once while reading (~14 MB at 105x105)

DOWNLOAD_HELP = (
    "To download it, run in Python:\n"
    "    from mlcourse.tasks.omniglot import load_omniglot\n"
    "    load_omniglot({root!r}, download=True)\n"
    "or put images_background.zip and images_evaluation.zip from\n"
    "    https://github.com/brendenlake/omniglot/tree/master/python\n"
    "into {root} (the extracted folders images_background/ and images_evaluation/ work too)."
)


class OmniglotError(RuntimeError):
    """An Omniglot archive could not be downloaded, or is damaged; the message says what to do."""


@dataclass(eq=False)
class Omniglot:
    """Omniglot characters in memory, with the standard few-shot splits and episode sampling.

    Usually made by :func:`load_omniglot`. See the module docstring for the order of the
    characters and the splits.

    Args:
        images: ``(num_characters, drawings, 1, H, W)`` float ink in [0, 1] (1623 x 20 for
            the full data set).
        names: ``(num_characters,)`` names such as ``"images_background/Latin/character01"``.
        num_background: how many of the characters (the first ones) are background ones.
        rotations: classes per character (4: each quarter turn is a class; 1: none).
        num_train_characters: characters in ``"train"`` (the first ones).
        num_val_characters: characters in ``"val"`` (the next ones); ``"test"`` is the rest.

    Example:
        >>> data = Omniglot(torch.zeros(10, 20, 1, 28, 28), num_background=6,
        ...                 num_train_characters=5, num_val_characters=2)
        >>> [len(data.classes(s)) for s in ("train", "val", "trainval", "test", "background")]
        [20, 8, 28, 12, 24]
        >>> tuple(data.sample(3, 5, 1, 2, split="trainval").x_query.shape)
        (3, 10, 1, 28, 28)
    """

    images: torch.Tensor
    names: tuple[str, ...] | None = None
    num_background: int = 964
    rotations: int = 4
    num_train_characters: int = VINYALS_TRAIN_CHARACTERS
    num_val_characters: int = VINYALS_VAL_CHARACTERS

    def __post_init__(self):
        if self.images.ndim != 5:
            raise ValueError(
                "images must be shaped (num_characters, drawings, 1, H, W), "
                f"got {tuple(self.images.shape)}"
            )
        num = self.images.shape[0]
        if self.names is not None and len(self.names) != num:
            raise ValueError(f"got {len(self.names)} names for {num} characters")
        if not 0 <= self.num_background <= num:
            raise ValueError(f"num_background must lie in [0, {num}], got {self.num_background}")
        if min(self.num_train_characters, self.num_val_characters) < 0:
            raise ValueError("num_train_characters and num_val_characters must be non-negative")
        if self.num_train_characters + self.num_val_characters > num:
            raise ValueError(
                f"num_train_characters + num_val_characters = "
                f"{self.num_train_characters + self.num_val_characters} is more than the {num} "
                "characters there are; lower them (the defaults are for the full 1623)"
            )
        if self.rotations < 1:
            raise ValueError(f"rotations must be at least 1, got {self.rotations}")

    @property
    def num_classes(self) -> int:
        return self.images.shape[0] * self.rotations

    def characters(self, split: str) -> torch.Tensor:
        """The character indices of a split (see the module docstring).

        Args:
            split: one of ``"train"``, ``"val"``, ``"trainval"``, ``"test"``,
                ``"background"``, ``"evaluation"``.

        Returns:
            ``(num_split_characters,)`` int64.

        Example:
            >>> Omniglot(torch.zeros(6, 2, 1, 4, 4), num_background=4, num_train_characters=3,
            ...          num_val_characters=1).characters("test")
            tensor([4, 5])
        """
        train, val = self.num_train_characters, self.num_val_characters
        bounds = {
            "train": (0, train),
            "val": (train, train + val),
            "trainval": (0, train + val),
            "test": (train + val, self.images.shape[0]),
            "background": (0, self.num_background),
            "evaluation": (self.num_background, self.images.shape[0]),
        }
        if split not in bounds:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        return torch.arange(*bounds[split])

    def classes(self, split: str) -> torch.Tensor:
        """The class ids of a split: every rotation of every character in it.

        Args:
            split: as in :meth:`characters`.

        Returns:
            ``(num_split_characters * rotations,)`` int64; class ``c * rotations + r`` is
            character ``c`` turned ``r`` quarter turns.

        Example:
            >>> Omniglot(torch.zeros(6, 2, 1, 4, 4), num_background=4, num_train_characters=3,
            ...          num_val_characters=1, rotations=2).classes("test")
            tensor([ 8,  9, 10, 11])
        """
        chars = self.characters(split)
        return (chars[:, None] * self.rotations + torch.arange(self.rotations)).flatten()

    def sample(
        self,
        num_tasks: int,
        n_way: int,
        k_shot: int,
        k_query: int,
        split: str = "train",
        generator: torch.Generator | None = None,
        device: torch.device | str | None = None,
    ) -> TaskBatch:
        """Samples N-way K-shot episodes from one split (see :func:`sample_bank_episodes`).

        Args:
            num_tasks: how many tasks.
            n_way: classes per task.
            k_shot: support images per class.
            k_query: query images per class (``k_shot + k_query`` at most 20).
            split: as in :meth:`characters`.
            generator: optional seeded ``torch.Generator``.
            device: where the tensors live (default: where ``images`` is).

        Returns:
            A class-major :class:`TaskBatch` with ``x_support: (num_tasks, n_way * k_shot,
            1, H, W)``, ``y_support: (num_tasks, n_way * k_shot)`` labels, ``x_query`` and
            ``y_query`` alike, and ``info["class_ids"]: (num_tasks, n_way)``.

        Example:
            >>> data = Omniglot(torch.rand(8, 20, 1, 28, 28), num_background=5,
            ...                 num_train_characters=4, num_val_characters=1)
            >>> batch = data.sample(2, 5, 1, 15, generator=torch.Generator().manual_seed(0))
            >>> tuple(batch.x_support.shape), tuple(batch.y_query.shape)
            ((2, 5, 1, 28, 28), (2, 75))
        """
        return sample_bank_episodes(
            self.images, num_tasks, n_way, k_shot, k_query, classes=self.classes(split),
            rotations=self.rotations, generator=generator, device=device,
        )  # fmt: skip


def load_omniglot(
    root: str | os.PathLike,
    *,
    image_size: int = 28,
    download: bool = False,
    rotations: int = 4,
    num_train_characters: int = VINYALS_TRAIN_CHARACTERS,
    num_val_characters: int = VINYALS_VAL_CHARACTERS,
    cache: bool = True,
    url_base: str = OMNIGLOT_URL_BASE,
    sha256: Mapping[str, str | None] | None = OMNIGLOT_SHA256,
) -> Omniglot:
    """Loads Omniglot from ``root``, from the tensor cache when there is one.

    The first load reads ``images_background.zip`` and ``images_evaluation.zip`` (or the
    folders ``images_background/`` and ``images_evaluation/``) from ``root``, which takes a
    few seconds, and writes ``omniglot_<size>x<size>.pt`` there (atomically: a failed load
    leaves no cache file). Later loads read only that file; delete it to rebuild.

    Args:
        root: the directory holding the archives (created when downloading).
        image_size: side of the images after area-averaging the 105x105 drawings.
        download: fetch the missing archives (see :func:`download_omniglot`).
        rotations: classes per character, see :class:`Omniglot`.
        num_train_characters: characters in the ``"train"`` split, see :class:`Omniglot`.
        num_val_characters: characters in the ``"val"`` split, see :class:`Omniglot`.
        cache: read and write the tensor cache.
        url_base: where to download from (the archive names are appended).
        sha256: expected SHA-256 of each archive, for the download.

    Returns:
        An :class:`Omniglot` with ``images: (1623, 20, 1, image_size, image_size)``.

    Raises:
        FileNotFoundError: the data is not in ``root`` and ``download`` is false.
        OmniglotError: an archive is damaged, or the download failed.

    Example:
        >>> load_omniglot("/no/such/folder")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        FileNotFoundError: Omniglot is not in /no/such/folder: ...
    """
    if image_size < 1:
        raise ValueError(f"image_size must be at least 1, got {image_size}")
    root = Path(root)
    cache_path = root / f"omniglot_{image_size}x{image_size}.pt"
    if cache and cache_path.exists():
        images, names, num_background = _read_cache(cache_path)
    else:
        sources = {name: _find_source(root, name) for name in ARCHIVES}
        missing = [name for name, source in sources.items() if source is None]
        if missing and not download:
            raise FileNotFoundError(
                f"Omniglot is not in {root}: {' and '.join(missing)} (or the extracted "
                f"folders) are missing.\n" + DOWNLOAD_HELP.format(root=str(root))
            )
        if missing:
            download_omniglot(root, names=missing, url_base=url_base, sha256=sha256)
            sources = {name: _find_source(root, name) for name in ARCHIVES}
        parts = [_read_drawings(sources[name], name, image_size) for name in ARCHIVES]
        names = [n for part_names, _ in parts for n in part_names]
        num_background = len(parts[0][0])
        images = torch.cat([part_images for _, part_images in parts])
        if cache:
            _write_cache(cache_path, images, names, num_background)
    return Omniglot(
        images=images.float() / INK_LEVELS,
        names=tuple(names),
        num_background=num_background,
        rotations=rotations,
        num_train_characters=num_train_characters,
        num_val_characters=num_val_characters,
    )


def download_omniglot(
    root: str | os.PathLike,
    *,
    names: Iterable[str] = ARCHIVES,
    url_base: str = OMNIGLOT_URL_BASE,
    sha256: Mapping[str, str | None] | None = OMNIGLOT_SHA256,
    timeout: float = 60.0,
) -> dict[str, Path]:
    """Downloads the Omniglot archives into ``root`` and checks their SHA-256.

    Each file is written to a temporary file in ``root``, checked, then renamed into place,
    so an interrupted or corrupted download never leaves a file behind. Archives already in
    ``root`` are checked, not downloaded again. With no expected hash for a file
    (``sha256=None`` or a ``None`` entry) the hash is printed instead of checked.

    Args:
        root: the directory to download into (created if needed).
        names: which archives.
        url_base: URL prefix; each archive's URL is ``url_base + name``.
        sha256: expected SHA-256 (hex) per archive name.
        timeout: seconds to wait for the server on each read.

    Returns:
        The path of each archive, by name.

    Raises:
        OmniglotError: the download failed or a file's hash is not the expected one.

    Example:
        >>> import tempfile
        >>> with tempfile.TemporaryDirectory() as root:  # doctest: +ELLIPSIS
        ...     download_omniglot(root, url_base="file:///no/such/place/")
        Traceback (most recent call last):
        ...
        mlcourse.tasks.omniglot.OmniglotError: could not download file:///no/such/place/images_background.zip ...
    """  # noqa: E501
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    paths = {}
    for name in names:
        expected = None if sha256 is None else sha256.get(name)
        path = root / name
        url = url_base + name
        if path.exists():
            _check_hash(path, _sha256_of(path), expected, url, downloaded=False)
        else:
            _download(url, path, expected, timeout)
        paths[name] = path
    return paths


def _download(url: str, path: Path, expected: str | None, timeout: float) -> None:
    """Streams ``url`` into a temporary file beside ``path``, checks it, renames it."""
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        digest = hashlib.sha256()
        with os.fdopen(handle, "wb") as out:
            try:
                with urllib.request.urlopen(url, timeout=timeout) as response:
                    announced = response.headers.get("Content-Length")
                    received = 0
                    while chunk := response.read(DOWNLOAD_CHUNK_BYTES):
                        out.write(chunk)
                        digest.update(chunk)
                        received += len(chunk)
            except (urllib.error.URLError, http.client.HTTPException, OSError) as error:
                raise OmniglotError(
                    f"could not download {url} ({error}). Check the connection and re-run, or "
                    f"download the file by hand and save it as {path}."
                ) from error
        if announced is not None and received != int(announced):
            raise OmniglotError(
                f"the download of {url} stopped after {received} of {announced} bytes. "
                f"Re-run, or download the file by hand and save it as {path}."
            )
        _check_hash(Path(temporary), digest.hexdigest(), expected, url, downloaded=True)
        os.replace(temporary, path)
    finally:
        if os.path.exists(temporary):
            os.remove(temporary)


def _sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        while chunk := file.read(DOWNLOAD_CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


def _check_hash(path: Path, actual: str, expected: str | None, url: str, downloaded: bool):
    if expected is None:
        print(f"{path.name}: SHA-256 {actual} (not checked: no expected hash was given)")
        return
    if actual.lower() == expected.lower():
        return
    if downloaded:
        raise OmniglotError(
            f"the file downloaded from {url} has SHA-256 {actual}, but {expected} was expected; "
            "it was deleted. The download was probably truncated or altered: re-run, or "
            "download the file by hand and pass sha256=None to skip the check."
        )
    raise OmniglotError(
        f"{path} has SHA-256 {actual}, but {expected} was expected: the file is damaged or "
        f"not the official one. Delete {path} and re-run to download it again (from {url})."
    )


def _find_source(root: Path, archive: str) -> Path | None:
    """The archive if it is there, else its extracted folder if that is there, else None."""
    zipped, folder = root / archive, root / archive.removesuffix(".zip")
    if zipped.is_file():
        return zipped
    return folder if folder.is_dir() else None


def _read_drawings(source: Path, archive: str, image_size: int) -> tuple[list[str], torch.Tensor]:
    """Reads one half of Omniglot, from a zip archive or its extracted folder.

    Returns:
        The character names (sorted, ``"<set>/<alphabet>/<character>"``) and their drawings
        as uint8 ink, ``(num_characters, drawings, 1, image_size, image_size)``.
    """
    top = archive.removesuffix(".zip")
    damaged = (
        f"{source} is damaged (truncated or corrupted). Delete it and run "
        f"load_omniglot({str(source.parent)!r}, download=True) to fetch a fresh copy, or put "
        f"a good copy there by hand (from {OMNIGLOT_URL_BASE + archive})."
    )
    try:
        with contextlib.ExitStack() as stack:
            if source.is_dir():
                paths = {p.relative_to(source.parent).as_posix(): p for p in source.rglob("*.png")}
                keys, read = list(paths), lambda key: paths[key].read_bytes()
            else:
                opened = stack.enter_context(zipfile.ZipFile(source))
                keys, read = opened.namelist(), opened.read
            characters: dict[str, list[str]] = {}
            for key in keys:
                parts = key.split("/")
                if len(parts) == 4 and parts[0] == top and parts[3].lower().endswith(".png"):
                    characters.setdefault("/".join(parts[:3]), []).append(key)
            if not characters:
                raise OmniglotError(
                    f"found no drawings in {source}: expected the official layout "
                    f"{top}/<alphabet>/<character>/<drawing>.png. "
                    + DOWNLOAD_HELP.format(root=str(source.parent))
                )
            counts = sorted({len(v) for v in characters.values()})
            if len(counts) != 1:
                raise OmniglotError(
                    f"the characters in {source} have different numbers of drawings "
                    f"({counts}); {damaged}"
                )
            names = sorted(characters)
            images = []
            for first in range(0, len(names), CHARACTERS_PER_CHUNK):
                chunk = [sorted(characters[n]) for n in names[first : first + CHARACTERS_PER_CHUNK]]
                images.append(_read_characters(read, chunk, image_size))
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError, SyntaxError) as error:
        # PIL raises OSError or SyntaxError on a broken PNG
        raise OmniglotError(f"{damaged} ({type(error).__name__}: {error})") from error
    return names, torch.cat(images)


def _read_characters(read, keys: list[list[str]], image_size: int) -> torch.Tensor:
    """Drawings as uint8 ink, ``(characters, drawings, 1, image_size, image_size)``.

    Args:
        read: returns the bytes of a PNG file given its key.
        keys: ``keys[c][d]`` is drawing ``d`` of character ``c``; all drawings the same size.
        image_size: side of the returned images.
    """
    from PIL import Image  # a dependency of matplotlib

    pages = []
    for key in (key for character in keys for key in character):
        gray = Image.open(io.BytesIO(read(key))).convert("L")  # white paper = 255
        pixels = torch.frombuffer(bytearray(gray.tobytes()), dtype=torch.uint8)
        pages.append(pixels.view(1, gray.height, gray.width))
    ink = 1 - torch.stack(pages).float() / INK_LEVELS  # (drawings, 1, H, W)
    small = F.interpolate(ink, size=(image_size, image_size), mode="area")
    small = (small * INK_LEVELS).round().to(torch.uint8)
    return small.view(len(keys), len(keys[0]), 1, image_size, image_size)


def _write_cache(path: Path, images: torch.Tensor, names: list[str], num_background: int):
    """Writes the cache to a temporary file, then renames it: never a half-written cache."""
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(handle)
    try:
        payload = {
            "format": CACHE_FORMAT,
            "images": images,
            "names": names,
            "num_background": num_background,
        }
        torch.save(payload, temporary)
        os.replace(temporary, path)
    finally:
        if os.path.exists(temporary):
            os.remove(temporary)


def _read_cache(path: Path) -> tuple[torch.Tensor, list[str], int]:
    try:
        payload = torch.load(path, weights_only=True)
        if payload.get("format") != CACHE_FORMAT:
            raise ValueError("made by another version of mlcourse")
        return payload["images"], payload["names"], payload["num_background"]
    except Exception as error:
        raise OmniglotError(
            f"the cache {path} cannot be read ({error}); delete it and re-run to rebuild it "
            "from the archives"
        ) from error
