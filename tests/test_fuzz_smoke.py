"""Run every fuzz target without atheris: each seed, then seeded random mutations.

Targets (tests/fuzz/fuzz_<name>.py, seeds in tests/fuzz/seeds/<name>/): record (batch decoder,
log scan, resync), frame (frame decoder, FrameReader, peer lists, the node core), segment (a log
file image opened by Segment's restart scan), pagestore (page store header and slots).
"""
import importlib.util
import os
import random
from pathlib import Path

import pytest

FUZZ = Path(__file__).resolve().parent / "fuzz"
# Mutations per target: the file-backed targets open real files for every input.
MUTATIONS = {"record": 2000, "frame": 1500, "segment": 300, "pagestore": 400}
TARGETS = sorted(MUTATIONS)


def load_target(name):
    spec = importlib.util.spec_from_file_location("fuzz_" + name, FUZZ / ("fuzz_%s.py" % name))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def seeds(name):
    return sorted((FUZZ / "seeds" / name).glob("*"))


MODULES = {name: load_target(name) for name in TARGETS}
SEEDS = [(name, seed) for name in TARGETS for seed in seeds(name)]


def mutate(rng, data, corpus):
    data = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        choice = rng.randrange(7)
        position = rng.randrange(len(data) + 1)
        if choice == 0 and data:
            data[min(position, len(data) - 1)] ^= 1 << rng.randrange(8)
        elif choice == 1 and data:
            data[min(position, len(data) - 1)] = rng.choice([0, 0xFF, rng.randrange(256)])
        elif choice == 2:
            del data[position:position + rng.randint(1, 16)]
        elif choice == 3:
            data[position:position] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 8)))
        elif choice == 4:
            del data[position:]
        elif choice == 5:
            other = rng.choice(corpus) or b"\x00"
            start = rng.randrange(len(other))
            data[position:position] = other[start:start + rng.randint(1, 64)]
        else:
            data[position:position] = bytes(rng.randint(1, 64))
    return bytes(data)


@pytest.mark.parametrize("name", TARGETS)
def test_seeds_exist_and_are_small(name):
    assert len(seeds(name)) >= 3
    assert all(seed.stat().st_size < 4096 for seed in seeds(name))


@pytest.mark.parametrize("name,seed", SEEDS, ids=["%s/%s" % (n, s.name) for n, s in SEEDS])
def test_seed(name, seed):
    MODULES[name].test_one_input(seed.read_bytes())


@pytest.mark.parametrize("name", TARGETS)
def test_random_mutations(name):
    rng = random.Random("20240517/" + name)
    corpus = [seed.read_bytes() for seed in seeds(name)]
    for i in range(MUTATIONS[name]):
        data = mutate(rng, rng.choice(corpus), corpus)
        try:
            MODULES[name].test_one_input(data)
        except Exception:
            raise AssertionError("%s: mutation %d failed on %s" % (name, i, data.hex()))
        if i % 50 == 0:
            corpus.append(data)   # grow the corpus a little, like a fuzzer would


def open_descriptors():
    return len(os.listdir("/proc/self/fd"))


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="needs /proc/self/fd")
@pytest.mark.parametrize("name", ["pagestore", "segment"])
def test_refused_files_leak_no_descriptors(name):
    """Found by fuzz_pagestore under atheris: every page store whose header was refused kept
    its descriptor and mapping, and after ~270,000 inputs the target died of EMFILE."""
    rng = random.Random("leak/" + name)
    corpus = [seed.read_bytes() for seed in seeds(name)]
    target = MODULES[name]
    target.test_one_input(corpus[0])          # the scratch directory and first files exist
    before = open_descriptors()
    for _ in range(200):
        # First byte odd: the whole file image, header included, so most inputs are refused.
        target.test_one_input(b"\x01" + mutate(rng, rng.choice(corpus), corpus))
        target.test_one_input(b"\x01" + bytes(rng.randrange(256) for _ in range(rng.randint(0, 200))))
    assert open_descriptors() == before
