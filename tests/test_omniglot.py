"""The Omniglot loader against a tiny archive in the official layout, served over local HTTP."""

import functools
import hashlib
import http.server
import io
import threading
import zipfile
from pathlib import Path

import pytest
import torch

from mlcourse.tasks import Omniglot, download_omniglot, load_omniglot, sample_bank_episodes
from mlcourse.tasks.episodes import sample_classes
from mlcourse.tasks.omniglot import ARCHIVES, OmniglotError

# sorted order differs from this order, to check that the loader sorts
LAYOUT = {"images_background": ["Beta", "Alpha"], "images_evaluation": ["Gamma", "Delta"]}
CHARACTERS, DRAWINGS, SIDE = 3, 4, 105
BAR_ROWS = 8  # character i (in sorted order) is a bar on rows [8 i, 8 i + 6)


def sorted_characters():
    return [
        f"{top}/{alphabet}/character{c + 1:02d}"
        for top, alphabets in LAYOUT.items()
        for alphabet in sorted(alphabets)
        for c in range(CHARACTERS)
    ]


def drawing_png(index: int, drawing: int) -> bytes:
    """A 1-bit drawing, black ink on white, like Omniglot's: a bar whose row says its character."""
    from PIL import Image, ImageDraw

    image = Image.new("1", (SIDE, SIDE), 1)
    top = BAR_ROWS * index
    ImageDraw.Draw(image).rectangle([10, top, 40 + 15 * drawing, top + 5], fill=0)
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


def make_archive(path: Path, top: str) -> None:
    index = {name: i for i, name in enumerate(sorted_characters())}
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for alphabet in LAYOUT[top]:
            for c in range(CHARACTERS):
                name = f"{top}/{alphabet}/character{c + 1:02d}"
                for d in range(DRAWINGS):
                    png = drawing_png(index[name], d)
                    archive.writestr(f"{name}/{index[name]:04d}_{d + 1:02d}.png", png)


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    requests: list[str] = []

    def do_GET(self):
        QuietHandler.requests.append(self.path)
        super().do_GET()

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def archives(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("official")
    for name in ARCHIVES:
        make_archive(folder / name, name.removesuffix(".zip"))
    return folder


@pytest.fixture
def server(tmp_path, monkeypatch):
    """Serves a folder on 127.0.0.1 (a free port) from a background thread."""
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    served = tmp_path / "served"
    served.mkdir()
    handler = functools.partial(QuietHandler, directory=str(served))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    QuietHandler.requests = []
    yield served, f"http://127.0.0.1:{httpd.server_address[1]}/"
    httpd.shutdown()
    httpd.server_close()
    thread.join()


def serve(served: Path, archives: Path, damage=None) -> dict[str, str]:
    """Copies the archives to the served folder (damaged if asked); returns the true hashes."""
    hashes = {}
    for name in ARCHIVES:
        data = (archives / name).read_bytes()
        hashes[name] = hashlib.sha256(data).hexdigest()
        (served / name).write_bytes(damage(data) if damage else data)
    return hashes


def truncate(data: bytes) -> bytes:
    return data[: len(data) // 2]


def flip_bytes(data: bytes) -> bytes:
    middle = len(data) // 3
    return data[:middle] + bytes(b ^ 0xFF for b in data[middle : middle + 64]) + data[middle + 64 :]


def flip_compressed_bytes(data: bytes) -> bytes:
    """Damages the compressed data of the first drawing (headers intact: a CRC/zlib error)."""
    first = zipfile.ZipFile(io.BytesIO(data)).infolist()[0]
    start = first.header_offset + 30 + len(first.filename.encode()) + len(first.extra)
    middle = start + first.compress_size // 2
    return data[:middle] + bytes(b ^ 0xFF for b in data[middle : middle + 8]) + data[middle + 8 :]


def test_download_then_load(tmp_path, archives, server):
    served, url = server
    hashes = serve(served, archives)
    root = tmp_path / "data"
    paths = download_omniglot(root, url_base=url, sha256=hashes)
    assert sorted(paths) == sorted(ARCHIVES)
    assert sorted(p.name for p in root.iterdir()) == sorted(ARCHIVES)  # no temporary files
    assert all(sha256(paths[name]) == hashes[name] for name in ARCHIVES)

    data = load_omniglot(root, num_train_characters=6, num_val_characters=2)
    num = 4 * CHARACTERS
    assert data.images.shape == (num, DRAWINGS, 1, 28, 28)
    assert data.images.dtype == torch.float32
    assert data.names == tuple(sorted_characters())
    assert data.num_background == 2 * CHARACTERS
    # ink is 1 on paper 0; character i's ink sits on its own rows, in the sorted order
    assert data.images.min() == 0 and data.images.max() == 1
    assert data.images[:, :, :, :, 0].max() == 0  # nothing drawn in the first column
    rows = torch.arange(28.0)
    ink_per_row = data.images.sum(dim=(1, 2, 4))  # (num, 28)
    centre = (ink_per_row * rows).sum(1) / ink_per_row.sum(1)
    expected = (BAR_ROWS * torch.arange(num) + 3) * 28 / SIDE - 0.5  # row k covers [k, k + 1)
    torch.testing.assert_close(centre, expected, atol=0.3, rtol=0)
    # drawings are in file-name order: drawing d has a bar 15 d pixels longer
    assert (data.images[0].sum(dim=(1, 2, 3)).diff() > 0).all()


def test_second_load_reads_only_the_cache(tmp_path, archives, monkeypatch):
    root = tmp_path / "data"
    root.mkdir()
    for name in ARCHIVES:
        (root / name).write_bytes((archives / name).read_bytes())
    first = load_omniglot(root, num_train_characters=6, num_val_characters=2)
    assert (root / "omniglot_28x28.pt").is_file()
    for name in ARCHIVES:
        (root / name).unlink()

    def no_zip(*args, **kwargs):
        raise AssertionError("the archives were read again")

    monkeypatch.setattr(zipfile, "ZipFile", no_zip)
    second = load_omniglot(root, num_train_characters=6, num_val_characters=2)
    torch.testing.assert_close(first.images, second.images, rtol=0, atol=0)
    assert first.names == second.names and first.num_background == second.num_background
    assert sorted(p.name for p in root.iterdir()) == ["omniglot_28x28.pt"]


def test_extracted_folders_and_other_sizes(tmp_path, archives):
    root = tmp_path / "data"
    for name in ARCHIVES:
        with zipfile.ZipFile(archives / name) as archive:
            archive.extractall(root)
    data = load_omniglot(
        root, image_size=14, cache=False, num_train_characters=6, num_val_characters=2
    )
    assert data.images.shape == (4 * CHARACTERS, DRAWINGS, 1, 14, 14)
    assert not list(root.glob("*.pt"))


def test_download_from_load_and_existing_files_are_not_fetched_again(tmp_path, archives, server):
    served, url = server
    hashes = serve(served, archives)
    root = tmp_path / "data"
    load_omniglot(
        root,
        download=True,
        url_base=url,
        sha256=hashes,
        num_val_characters=0,
        num_train_characters=6,
    )
    assert sorted(QuietHandler.requests) == sorted(f"/{name}" for name in ARCHIVES)
    download_omniglot(root, url_base=url, sha256=hashes)  # checks the files, fetches nothing
    assert len(QuietHandler.requests) == 2


def test_missing_data_says_where_to_put_it(tmp_path):
    with pytest.raises(FileNotFoundError) as error:
        load_omniglot(tmp_path)
    message = str(error.value)
    assert str(tmp_path) in message and "download=True" in message
    assert "images_background.zip" in message and "images_evaluation.zip" in message
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("damage", [truncate, flip_bytes])
def test_damaged_download_with_hash_leaves_nothing(tmp_path, archives, server, damage):
    served, url = server
    hashes = serve(served, archives, damage)
    root = tmp_path / "data"
    with pytest.raises(OmniglotError, match="SHA-256 .* was expected; it was deleted"):
        download_omniglot(root, url_base=url, sha256=hashes)
    assert not list(root.iterdir())
    with pytest.raises(OmniglotError, match="was expected"):
        load_omniglot(root, download=True, url_base=url, sha256=hashes)
    assert not list(root.iterdir())


@pytest.mark.parametrize("damage", [truncate, flip_bytes, flip_compressed_bytes])
def test_damaged_archive_gives_a_clear_error_and_no_cache(
    tmp_path, archives, server, damage, capsys
):
    served, url = server
    serve(served, archives, damage)
    root = tmp_path / "data"
    download_omniglot(root, url_base=url, sha256=None)  # no hash to check: prints it
    assert "SHA-256" in capsys.readouterr().out
    with pytest.raises(OmniglotError) as error:
        load_omniglot(root, num_train_characters=6, num_val_characters=2)
    message = str(error.value)
    assert "is damaged" in message and "Delete it" in message and "download=True" in message
    assert sorted(p.name for p in root.iterdir()) == sorted(ARCHIVES)  # no cache, no temp file


def test_interrupted_download_leaves_nothing(tmp_path, archives, monkeypatch):
    """The server announces the full length and hangs up halfway."""
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    data = (archives / ARCHIVES[0]).read_bytes()

    class HangUp(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data[: len(data) // 2])

        def log_message(self, *args):
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), HangUp)
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{httpd.server_address[1]}/"
        with pytest.raises(OmniglotError, match="re-run|Re-run"):
            download_omniglot(tmp_path, names=ARCHIVES[:1], url_base=url, sha256=None)
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join()
    assert not list(tmp_path.iterdir())


def test_unreachable_server_leaves_nothing(tmp_path):
    with pytest.raises(OmniglotError, match="could not download"):
        download_omniglot(tmp_path, url_base="http://127.0.0.1:9/", timeout=5)
    assert not list(tmp_path.iterdir())


def test_a_damaged_existing_archive_is_reported_not_replaced(tmp_path, archives):
    (tmp_path / ARCHIVES[0]).write_bytes(truncate((archives / ARCHIVES[0]).read_bytes()))
    expected = {ARCHIVES[0]: sha256(archives / ARCHIVES[0])}
    with pytest.raises(OmniglotError, match="Delete .* and re-run"):
        download_omniglot(tmp_path, names=ARCHIVES[:1], sha256=expected)


def test_splits_follow_the_character_order():
    data = Omniglot(
        torch.zeros(12, 4, 1, 28, 28), num_background=6, num_train_characters=5,
        num_val_characters=2,
    )  # fmt: skip
    chars = {s: data.characters(s).tolist() for s in ("train", "val", "trainval", "test")}
    assert chars == {
        "train": [0, 1, 2, 3, 4],
        "val": [5, 6],
        "trainval": [0, 1, 2, 3, 4, 5, 6],
        "test": [7, 8, 9, 10, 11],
    }
    assert data.characters("background").tolist() == list(range(6))
    assert data.characters("evaluation").tolist() == list(range(6, 12))
    # each quarter turn is its own class, in the same split as its character
    assert data.classes("val").tolist() == [20, 21, 22, 23, 24, 25, 26, 27]
    assert data.num_classes == 48
    with pytest.raises(ValueError, match="more than the 12 characters"):
        Omniglot(torch.zeros(12, 4, 1, 28, 28), num_background=6)
    with pytest.raises(ValueError, match="split must be one of"):
        data.classes("meta-test")


def test_the_full_sized_default_split():
    data = Omniglot(torch.zeros(1623, 1, 1, 2, 2))
    sizes = {s: len(data.classes(s)) for s in ("train", "val", "trainval", "test")}
    assert sizes == {"train": 4112, "val": 688, "trainval": 4800, "test": 1692}
    assert len(data.classes("background")) == 964 * 4


def test_bank_episodes_draw_distinct_classes_and_images_and_rotate():
    bank = torch.arange(6 * 5 * 3 * 3, dtype=torch.float32).view(6, 5, 1, 3, 3)
    g = torch.Generator().manual_seed(0)
    batch = sample_bank_episodes(bank, 50, 4, 2, 3, rotations=4, generator=g)
    assert batch.x_support.shape == (50, 8, 1, 3, 3) and batch.x_query.shape == (50, 12, 1, 3, 3)
    assert batch.y_support[0].tolist() == [0, 0, 1, 1, 2, 2, 3, 3]
    ids = batch.info["class_ids"]
    assert all(len(set(row)) == 4 for row in ids.tolist())
    assert set(ids.flatten().tolist()) == set(range(24))  # every class gets drawn
    images = torch.cat([batch.x_support.view(50, 4, 2, 9), batch.x_query.view(50, 4, 3, 9)], 2)
    for t in range(50):
        for label in range(4):
            entry, turns = divmod(ids[t, label].item(), 4)
            seen = set()
            for image in images[t, label]:
                upright = torch.rot90(image.view(1, 3, 3), -turns, dims=(-2, -1))
                matches = [j for j in range(5) if torch.equal(upright, bank[entry, j])]
                assert len(matches) == 1
                seen.add(matches[0])
            assert len(seen) == 5  # distinct drawings of the class within a task
    again = sample_bank_episodes(bank, 50, 4, 2, 3, rotations=4, generator=g.manual_seed(0))
    torch.testing.assert_close(again.x_query, batch.x_query, rtol=0, atol=0)


def test_bank_episodes_say_what_is_wrong():
    bank = torch.zeros(6, 5, 1, 3, 3)
    with pytest.raises(ValueError, match="more than the 5 images per class"):
        sample_bank_episodes(bank, 2, 3, 3, 3)
    with pytest.raises(ValueError, match="n_way=7 is larger than the 6 classes"):
        sample_bank_episodes(bank, 2, 7, 1, 1)
    with pytest.raises(ValueError, match="classes must lie in"):
        sample_bank_episodes(bank, 2, 2, 1, 1, classes=torch.tensor([0, 6]))
    with pytest.raises(ValueError, match="square"):
        sample_bank_episodes(torch.zeros(6, 5, 1, 3, 4), 2, 2, 1, 1, rotations=4)


def test_every_class_is_equally_likely_under_every_label():
    ids = sample_classes(torch.arange(10, 16), 30_000, 3, torch.Generator().manual_seed(0))
    assert all(len(set(row)) == 3 for row in ids[:1000].tolist())
    counts = torch.stack([torch.bincount(ids[:, label] - 10, minlength=6) for label in range(3)])
    expected = 30_000 / 6
    assert ((counts - expected).abs() < 5 * expected**0.5).all()  # 5 standard deviations
