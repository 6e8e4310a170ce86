"""Run the record fuzz target without atheris: every seed, then 2000 seeded random mutations."""
import importlib.util
import random
from pathlib import Path

import pytest

FUZZ = Path(__file__).resolve().parent / "fuzz"
SEEDS = sorted((FUZZ / "seeds" / "record").glob("*"))
MUTATIONS = 2000


def load_target():
    spec = importlib.util.spec_from_file_location("fuzz_record", FUZZ / "fuzz_record.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


TARGET = load_target()


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


def test_seeds_exist_and_are_small():
    assert len(SEEDS) >= 3
    assert all(seed.stat().st_size < 4096 for seed in SEEDS)


@pytest.mark.parametrize("seed", SEEDS, ids=[s.name for s in SEEDS])
def test_seed(seed):
    TARGET.test_one_input(seed.read_bytes())


def test_random_mutations():
    rng = random.Random(20240517)
    corpus = [seed.read_bytes() for seed in SEEDS]
    for i in range(MUTATIONS):
        data = mutate(rng, rng.choice(corpus), corpus)
        try:
            TARGET.test_one_input(data)
        except AssertionError:
            raise AssertionError("mutation %d failed on %s" % (i, data.hex()))
        if i % 50 == 0:
            corpus.append(data)   # grow the corpus a little, like a fuzzer would
