"""text8: the normaliser, the tfds builder (offline, on a fixture) and the Dataset."""

import hashlib
import os
import pathlib
import zipfile

import numpy as np
import pytest
import tensorflow_datasets as tfds

from vmd_jax.data import text8 as t8
from vmd_jax.data import text8_builder as t8b
from vmd_jax.data import text_sources as ts
from vmd_jax.data import text_normalize as tn

tfds.disable_progress_bar()

REPO = pathlib.Path(__file__).parent.parent
FIXTURE = pathlib.Path(__file__).parent / "data" / "text8" / "sqlite3_h_comments.txt"


def _listing(path):
  return sorted(str(p.relative_to(path)) for p in pathlib.Path(path).rglob("*"))


# The normaliser and the token codec.


@pytest.mark.parametrize("text, expected", [
    ("Hello, World! 42 times", "hello world four two times"),
    ("  A-B_c\n\tD  ", "a b c d"),
    ("pi=3.14", "pi three one four"),
    ("0123456789", "zero one two three four five six seven eight nine"),
    ("café naïve", "caf na ve"),  # only ASCII letters are letters (wikifil.pl)
    ("ÀBC", "bc"),
    ("", ""),
    ("!?!", ""),
    ("already text eight", "already text eight"),
])
def test_normalize_text_exact(text, expected):
  assert tn.normalize_text(text) == expected


def test_normalize_fixture_is_in_alphabet():
  text = tn.normalize_text(FIXTURE.read_text(encoding="utf-8"))
  tn.check_text8_alphabet(text, "fixture")
  assert "  " not in text and text == text.strip()
  assert len(text) > 50_000


def test_encode_decode_round_trip():
  tokens = tn.encode("hello world")
  assert tokens.dtype == np.uint8
  np.testing.assert_array_equal(tokens, [7, 4, 11, 11, 14, 26, 22, 14, 17, 11, 3])
  np.testing.assert_array_equal(tn.encode("az "), [0, 25, 26])
  text = tn.normalize_text(FIXTURE.read_text(encoding="utf-8"))
  assert tn.decode(tn.encode(text)) == text
  assert tn.decode(np.array([0, tn.MASK_ID, 26, 1], np.int32)) == "a_ b"
  assert (tn.VOCAB_SIZE, tn.MASK_ID) == (27, 27)
  with pytest.raises(ValueError, match="'H' at offset 0"):
    tn.encode("Hi")
  with pytest.raises(ValueError, match=r"\[0, 27\]"):
    tn.decode([28])


def test_check_text8_alphabet_names_source_char_and_offset():
  tn.check_text8_alphabet("ab c", "ok.txt")
  with pytest.raises(ValueError, match=r"my_file\.txt: character ',' at offset 3"):
    tn.check_text8_alphabet("abc,d", "my_file.txt")


# The builder.


def test_split_bounds_standard_text8():
  assert ts.split_bounds(100_000_000) == {
      "train": (0, 90_000_000), "validation": (90_000_000, 95_000_000),
      "test": (95_000_000, 100_000_000)}


def test_local_builder_splits_and_reassembles_fixture(tmp_path):
  builder = t8b.prepare_local_text(FIXTURE, tmp_path, chunk_chars=5_000)
  expected = tn.encode(tn.normalize_text(FIXTURE.read_text(encoding="utf-8")))
  n = len(expected)
  splits = {s: t8b.load_split(builder, s) for s in ts.SPLITS}
  assert {s: len(v) for s, v in splits.items()} == {
      "train": n * 90 // 100, "validation": n * 95 // 100 - n * 90 // 100,
      "test": n - n * 95 // 100}
  assert builder.info.splits["train"].num_examples == -(-(n * 90 // 100) // 5_000)
  np.testing.assert_array_equal(np.concatenate([splits[s] for s in ts.SPLITS]),
                                expected)
  # A second builder with the same config reads the prepared data back.
  again = t8b.Text8(data_dir=tmp_path, config=t8b.local_text_config(
      FIXTURE, chunk_chars=5_000))
  np.testing.assert_array_equal(t8b.load_split(again, "test"), splits["test"])
  ds = t8.Text8Dataset.from_builder(again, seq_len=100)
  total = sum(b["weight"].sum() for b in ds.eval_batches(8, split="validation"))
  assert total == len(splits["validation"])


def test_unnormalised_bad_character_names_file_and_offset_and_cleans_up(tmp_path):
  texts = tmp_path / "texts"
  texts.mkdir()
  (texts / "a.txt").write_text("fine text here")
  (texts / "b.txt").write_text("abc def\nghi")
  data_dir = tmp_path / "tfds"
  data_dir.mkdir()
  with pytest.raises(ValueError, match=r"b\.txt: character '\\n' at offset 7"):
    t8b.prepare_local_text(texts, data_dir, normalize=False)
  assert _listing(data_dir) == []
  # A data_dir the failed call created itself is removed as well.
  with pytest.raises(ValueError, match="offset 7"):
    t8b.prepare_local_text(texts, tmp_path / "new_dir", normalize=False)
  assert not (tmp_path / "new_dir").exists()


def test_unnormalised_clean_text_is_kept_verbatim(tmp_path):
  text = tn.normalize_text(FIXTURE.read_text(encoding="utf-8"))[:3_000]
  (tmp_path / "clean.txt").write_text(text)
  builder = t8b.prepare_local_text(tmp_path / "clean.txt", tmp_path / "tfds",
                                  normalize=False)
  got = np.concatenate([t8b.load_split(builder, s) for s in ts.SPLITS])
  np.testing.assert_array_equal(got, tn.encode(text))


def test_missing_files_raise_file_not_found_and_leave_nothing(tmp_path):
  data_dir = tmp_path / "tfds"
  missing = tmp_path / "no_such.txt"
  with pytest.raises(FileNotFoundError, match=str(missing)):
    t8b.prepare_local_text(missing, data_dir)
  missing_zip = tmp_path / "nowhere" / "text8.zip"
  with pytest.raises(FileNotFoundError,
                     match=f"{missing_zip}.*mattmahoney.net/dc/text8.zip"):
    t8b.prepare_text8(data_dir, local_path=missing_zip)
  empty_manual = tmp_path / "manual"
  empty_manual.mkdir()
  with pytest.raises(FileNotFoundError, match=f"{empty_manual}.*text8.zip"):
    t8b.prepare_text8(data_dir, manual_dir=empty_manual, allow_download=False)
  assert not data_dir.exists()


@pytest.fixture
def small_text8(monkeypatch):
  """A 20,000-character stand-in for text8, with the checks scaled to it."""
  text = tn.normalize_text(FIXTURE.read_text(encoding="utf-8"))[:20_000].encode()
  monkeypatch.setattr(ts, "TEXT8_CHARS", len(text))
  monkeypatch.setattr(ts, "TEXT8_TEXT_MD5", hashlib.md5(text).hexdigest())
  return text


def test_text8_from_local_zip_and_manual_dir(tmp_path, small_text8):
  with zipfile.ZipFile(tmp_path / "text8.zip", "w") as archive:
    archive.writestr("text8", small_text8)
  builder = t8b.prepare_text8(tmp_path / "a", local_path=tmp_path / "text8.zip")
  splits = [t8b.load_split(builder, s) for s in ts.SPLITS]
  assert [len(s) for s in splits] == [18_000, 1_000, 1_000]
  assert tn.decode(np.concatenate(splits)).encode() == small_text8
  manual = tmp_path / "manual"
  manual.mkdir()
  (manual / "text8").write_bytes(small_text8)
  builder = t8b.prepare_text8(tmp_path / "b", manual_dir=manual, allow_download=False)
  np.testing.assert_array_equal(t8b.load_split(builder, "test"), splits[2])


def test_text8_download_used_only_without_local_copy(tmp_path, small_text8,
                                                     monkeypatch):
  with zipfile.ZipFile(tmp_path / "text8.zip", "w") as archive:
    archive.writestr("text8", small_text8)
  urls = []

  def fake_download(self, url):  # stands in for the network
    urls.append(url)
    return tmp_path / "text8.zip"

  monkeypatch.setattr(tfds.download.DownloadManager, "download", fake_download)
  builder = t8b.prepare_text8(tmp_path / "tfds", manual_dir=tmp_path / "empty")
  assert urls == [ts.TEXT8_URL]
  assert len(t8b.load_split(builder, "train")) == 18_000
  t8b.prepare_text8(tmp_path / "tfds2", local_path=tmp_path / "text8.zip")
  assert urls == [ts.TEXT8_URL]  # a local path never downloads


def test_text8_failed_download_says_how_to_provide_it(tmp_path, monkeypatch):
  def no_network(self, url):
    raise ConnectionError("no route to host")

  monkeypatch.setattr(tfds.download.DownloadManager, "download", no_network)
  with pytest.raises(FileNotFoundError,
                     match=r"manual dir .*text8.zip failed \(ConnectionError"):
    t8b.prepare_text8(tmp_path / "tfds", manual_dir=tmp_path / "empty")
  assert not (tmp_path / "tfds").exists()


def test_text8_wrong_length_or_checksum_is_rejected_and_cleaned_up(tmp_path,
                                                                   small_text8):
  (tmp_path / "short").mkdir()
  (tmp_path / "short" / "text8").write_bytes(small_text8[:-1])
  with pytest.raises(ValueError, match="19,999 characters, expected 20,000"):
    t8b.prepare_text8(tmp_path / "tfds", local_path=tmp_path / "short")
  (tmp_path / "other").mkdir()
  (tmp_path / "other" / "text8").write_bytes(small_text8[::-1])
  with pytest.raises(ValueError, match="md5"):
    t8b.prepare_text8(tmp_path / "tfds", local_path=tmp_path / "other")
  assert not (tmp_path / "tfds").exists()


def test_text8_checksum_is_registered_for_the_download():
  info = t8b.Text8.url_infos[ts.TEXT8_URL]
  # text8.zip's published sha256 (mattmahoney.net/dc/text8.zip), written out here so
  # a changed constant fails
  assert int(info.size) == 31_344_016 and info.checksum == (
      "a6640522afe85d1963ad56c05b0ede0a0c000dddc9671758a6cc09b7a38e5232")


# The Dataset.


@pytest.mark.parametrize("n, seq_len, batch_size", [
    (1000, 100, 3),   # L divides n; 10 windows, last batch padded by 2 rows
    (1037, 100, 4),   # overlapping last window, 11 windows
    (1037, 100, 11),  # exactly one batch
    (100, 100, 2),    # one window
    (150, 100, 1),
])
def test_eval_windows_cover_every_character_once(n, seq_len, batch_size):
  rng = np.random.default_rng(0)
  test_tokens = rng.integers(0, 27, n).astype(np.uint8)
  ds = t8.Text8Dataset(lambda split: test_tokens, seq_len=seq_len)
  batches = list(ds.eval_batches(batch_size, split="test"))
  x0 = np.concatenate([b["x0"] for b in batches])
  weight = np.concatenate([b["weight"] for b in batches])
  for b in batches:
    assert b["x0"].shape == b["weight"].shape == (batch_size, seq_len)
    assert b["x0"].dtype == np.int32 and b["weight"].dtype == np.float32
  # The windows the docstring promises, written out.
  starts = [i * seq_len for i in range(n // seq_len)]
  if n % seq_len:
    starts.append(n - seq_len)
  count = np.zeros(n)
  for row, start in enumerate(starts):
    np.testing.assert_array_equal(x0[row], test_tokens[start:start + seq_len])
    count[start:start + seq_len] += weight[row]
  np.testing.assert_array_equal(count, np.ones(n))
  assert weight.sum() == n
  assert not weight[len(starts):].any()  # padding rows
  assert len(x0) == -(-len(starts) // batch_size) * batch_size
  if n % seq_len:
    overlap = seq_len - n % seq_len
    assert not weight[len(starts) - 1, :overlap].any()
    assert weight[len(starts) - 1, overlap:].all()


def test_train_batches_deterministic_windows():
  rng = np.random.default_rng(1)
  tokens = rng.integers(0, 27, 20_000).astype(np.uint8)
  ds = t8.Text8Dataset.from_tokens(tokens, seq_len=32, seed=3)
  batch = ds.train_batch(step=5, batch_size=16)
  assert set(batch) == {"x0"}
  assert batch["x0"].shape == (16, 32) and batch["x0"].dtype == np.int32
  assert batch["x0"].min() >= 0 and batch["x0"].max() < tn.VOCAB_SIZE
  np.testing.assert_array_equal(
      batch["x0"], t8.Text8Dataset.from_tokens(tokens, 32, 3).train_batch(5, 16)["x0"])
  assert not np.array_equal(batch["x0"], ds.train_batch(6, 16)["x0"])
  assert not np.array_equal(
      batch["x0"], t8.Text8Dataset.from_tokens(tokens, 32, 4).train_batch(5, 16)["x0"])
  train = tokens[:18_000].tobytes()  # rows are windows of the train split
  for row in batch["x0"]:
    assert train.find(row.astype(np.uint8).tobytes()) >= 0


@pytest.mark.parametrize("num_eval", [0, 1, 7, 10, 11])
def test_num_eval_evaluates_the_first_windows(num_eval):
  """num_eval rows of eval_batches (0: all 11), the full split's first windows
  with their weights; each process's rows of them join to the whole batches."""
  tokens = np.random.default_rng(2).integers(0, 27, 20_740).astype(np.uint8)
  full = t8.Text8Dataset.from_tokens(tokens, seq_len=100)  # test: 1037 characters
  assert len(full.eval_windows()[0]) == 11
  ds = t8.Text8Dataset.from_tokens(tokens, seq_len=100, num_eval=num_eval)
  batches = list(ds.eval_batches(4))
  x0, weight = (np.concatenate([b[k] for b in batches]) for k in ("x0", "weight"))
  rows = num_eval or 11
  whole = list(full.eval_batches(4))
  full_x0, full_weight = (np.concatenate([b[k] for b in whole]) for k in ("x0", "weight"))
  assert len(batches) == -(-rows // 4) and weight.any(-1).sum() == rows
  np.testing.assert_array_equal(x0[:rows], full_x0[:rows])
  np.testing.assert_array_equal(weight[:rows], full_weight[:rows])
  assert not weight[rows:].any() and not x0[rows:].any()
  assert weight.sum() == (1037 if rows == 11 else rows * 100)
  for cut in (1, 3):  # two processes' rows of every batch
    parts = zip(ds.eval_batches(4, rows=slice(0, cut)), ds.eval_batches(4, rows=slice(cut, 4)))
    for (a, b), batch in zip(parts, batches, strict=True):
      np.testing.assert_array_equal(np.concatenate([a["x0"], b["x0"]]), batch["x0"])
      np.testing.assert_array_equal(np.concatenate([a["weight"], b["weight"]]), batch["weight"])


def test_num_eval_beyond_the_windows_is_refused():
  tokens = np.zeros(20_740, np.uint8)
  with pytest.raises(ValueError, match=r"num_eval=12 is more than the 11 windows of "
                     r"seq_len=100 in split 'test'; accepted: 0 \(all\) to 11"):
    t8.Text8Dataset.from_tokens(tokens, seq_len=100, num_eval=12)
  with pytest.raises(ValueError, match=r"num_eval must be >= 0 \(0: every window\), got -1"):
    t8.Text8Dataset.from_tokens(tokens, seq_len=100, num_eval=-1)


def test_config_num_eval_reaches_the_text8_dataset(tmp_path):
  """``data.num_eval`` of a text8 run: that many windows of the test split, not all."""
  from vmd_jax.trainer import build, config as config_lib
  c = config_lib.load_config_file(os.path.join(REPO, "configs", "text8_md4.py"))
  c.data.text8.source, c.data.text8.path = "local", str(FIXTURE)
  c.data.text8.data_dir, c.data.seq_len, c.data.num_eval = str(tmp_path / "tfds"), 32, 10
  ds = build.build_dataset(c)
  assert ds.num_eval == 10
  assert sum(b["weight"].sum() for b in ds.eval_batches(8)) == 10 * 32


def test_a_split_shorter_than_seq_len_is_refused_when_the_dataset_is_built(tmp_path,
                                                                          monkeypatch):
  """The test split is checked on construction, not first in evaluation; from a
  prepared builder, from its metadata without loading any split."""
  tokens = np.zeros(700, np.uint8)  # test split: 35 characters
  match = r"split 'test' has 35 characters, fewer than seq_len=64; accepted: seq_len <= 35"
  with pytest.raises(ValueError, match=match):
    t8.Text8Dataset.from_tokens(tokens, seq_len=64)
  with pytest.raises(ValueError, match=match):
    t8.Text8Dataset(lambda split: tokens[:35 if split == "test" else 630], seq_len=64)
  assert t8.Text8Dataset.from_tokens(tokens, seq_len=35).seq_len == 35
  (tmp_path / "small.txt").write_text("ab " * 240)  # 719 characters normalised
  t8b.prepare_local_text(tmp_path / "small.txt", tmp_path / "tfds")
  builder = t8b.Text8(data_dir=tmp_path / "tfds",  # read back, as from_config does
                      config=t8b.local_text_config(tmp_path / "small.txt"))
  loaded = []
  monkeypatch.setattr(t8b, "load_split", lambda b, split: loaded.append(split))
  with pytest.raises(ValueError, match=r"split 'test' has 36 characters, fewer than seq_len=64"):
    t8.Text8Dataset.from_builder(builder, seq_len=64)
  t8.Text8Dataset.from_builder(builder, seq_len=36)
  assert loaded == []


def test_short_test_split_fails_training_at_set_up(tmp_path):
  """A local text whose test split is shorter than seq_len: BadSetup (one line,
  exit 2) before config.json or a checkpoint is written, not a crash after training."""
  from vmd_jax.trainer import cli, config as config_lib, train
  (tmp_path / "small.txt").write_text("ab " * 240)
  c = config_lib.load_config_file(os.path.join(REPO, "configs", "text8_md4.py"))
  c.data.text8.source, c.data.text8.path = "local", str(tmp_path / "small.txt")
  c.data.text8.data_dir, c.data.seq_len = str(tmp_path / "tfds"), 64
  c.model.width, c.model.depth, c.model.num_heads = 16, 1, 2
  c.train.batch_size, c.train.num_steps, c.train.warmup_steps = 8, 1, 1
  c.eval.settings = "ancestral:2"
  with pytest.raises(train.BadSetup, match=r"split 'test' has 36 characters") as e:
    train.train_and_evaluate(c, str(tmp_path / "run"))
  assert cli._run_ended(e.value) == 2 and "\n" not in str(e.value)
  assert os.listdir(tmp_path / "run") == [".lock"]


def test_fixture_is_small_and_documented():
  assert os.path.getsize(FIXTURE) < 200_000
  assert (FIXTURE.parent / "README.md").exists()
