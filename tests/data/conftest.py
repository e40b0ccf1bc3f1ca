"""The bitk.data tests cache the trained tokenizer (and `datasets` its files) in fresh folders, never the user's."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session", autouse=True)
def bitk_cache_dir(tmp_path_factory):
    import datasets

    path = tmp_path_factory.mktemp("bitk-cache")
    hf_cache = tmp_path_factory.mktemp("hf-datasets-cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("BITK_CACHE_DIR", str(path))
        # `datasets` caches what it reads from local files: keep that out of the user's cache too
        mp.setenv("HF_DATASETS_CACHE", str(hf_cache))
        mp.setattr(datasets.config, "HF_DATASETS_CACHE", hf_cache)
        yield path
