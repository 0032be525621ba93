"""The scene video-QA set (stts_jax/data/scenes.py): deterministic, a camera that really moves, answers
that the rendered pixels hold, needles over a few windows of one frame, every question tagged, and the
TFDS build read back as generated."""

from __future__ import annotations

import re

import numpy as np
import pytest
from sklearn.datasets import load_digits

from stts_jax.data import scenes
from stts_jax.data.builders import SPLIT_SEEDS
from stts_jax.data.pipeline import Preprocess
from stts_jax.data.sources import scene_settings, source
from stts_jax.errors import ConfigError
from stts_jax.evaluate.multiple_choice import object_windows
from stts_jax.experiments.scenes import get_config
from stts_jax.models import get_config as model_variant
from stts_jax.train.experiment import model_config, pipeline_config
from stts_jax.windows import frame_windows

CFG = scenes.SceneConfig()  # 8 frames of 42 x 42: the `tiny` model's input, 9 windows per frame
TINY = model_variant("tiny")
EXAMPLES = [scenes.generate_example(7, i, CFG) for i in range(8 * len(scenes.FAMILIES))]  # 8 of each family


def _window_change(video: np.ndarray) -> np.ndarray:
    """[T, H, W, 3] -> [T - 1, windows]: mean absolute change from the previous frame, per tiny-model window."""
    change = np.abs(np.diff(video.astype(np.float32), axis=0)).mean(-1)
    (rows, cols), patch = TINY.vision.patch_grid, TINY.vision.patch_size
    patches = change.reshape(len(change), rows, patch, cols, patch).mean((2, 4)).reshape(len(change), -1)
    windows = frame_windows(TINY)
    per_patch = np.where(windows >= 0, patches[:, np.maximum(windows, 0)], np.nan)
    return np.nanmean(per_patch, -1)


def _visible(example: dict) -> np.ndarray:
    """[T] bool: the frames that show the answer's objects."""
    return np.isin(example["masks"], example["targets"]).any((1, 2))


def test_pure_function_of_seed_index_and_config():
    again = scenes.generate_example(7, 5, CFG)
    for key, value in EXAMPLES[5].items():
        np.testing.assert_array_equal(np.asarray(again[key]), np.asarray(value), err_msg=key)
    other_seed, other_index = scenes.generate_example(8, 5, CFG), scenes.generate_example(7, 9, CFG)
    assert not np.array_equal(other_seed["video"], again["video"])
    assert not np.array_equal(other_index["video"], again["video"])
    assert EXAMPLES[5]["video"].shape == (8, 42, 42, 3) and EXAMPLES[5]["masks"].shape == (8, 42, 42)


def test_camera_moves_so_consecutive_frames_differ_over_most_windows():
    changed = {motion: [] for motion in scenes.MOTIONS}
    for example in EXAMPLES:
        changed[example["camera"]].append((_window_change(example["video"]) > 8).mean())  # > 8 grey levels
    assert all(changed.values()), f"every camera motion is drawn: {changed}"
    assert np.mean([s for shares in changed.values() for s in shares]) > 0.8
    assert all(np.mean(shares) > 0.65 for shares in changed.values()), changed
    assert len({e["photo"] for e in EXAMPLES}) >= 5  # backgrounds from several photographs


def test_photographs_are_grey_unless_asked_so_that_a_color_names_an_object():
    index = next(i for i, e in enumerate(EXAMPLES) if e["photo"] in ("astronaut", "chelsea", "coffee"))  # in colour
    background = EXAMPLES[index]["masks"] == 0
    grey = EXAMPLES[index]["video"][background].astype(int)
    assert np.abs(grey - grey[:, :1]).max() <= 1  # R = G = B but for rounding
    colored = scenes.generate_example(7, index, scenes.SceneConfig(photo_saturation=1.0))
    assert np.abs(np.diff(colored["video"][background].astype(int), axis=-1)).mean() > 5
    with pytest.raises(ValueError, match="photo_saturation"):
        scenes.SceneConfig(photo_saturation=1.5)


def _fill_pixels(example: dict, t: int, color: tuple[int, int, int]) -> set[int]:
    """The mask ids of frame t whose pixels include `color` exactly."""
    on = (example["video"][t] == np.asarray(color, np.uint8)).all(-1)
    return set(np.unique(example["masks"][t][on]).tolist()) - {0}


DIGITS = load_digits()


def _read_card(example: dict, t: int, card: int) -> tuple[tuple[int, ...], str]:
    """A card's ground colour and the digit it shows, read off frame t's pixels: the nearest of
    load_digits' samples to the ink inside its border (the card is 12 px: border, margin, 8 x 8 ink)."""
    ys, xs = np.nonzero(example["masks"][t] == card)
    pixels = example["video"][t, ys.min() : ys.max() + 1, xs.min() : xs.max() + 1]
    colors, counts = np.unique(pixels[1:-1, 1:-1].reshape(-1, 3), axis=0, return_counts=True)
    fill = colors[counts.argmax()]
    distance = np.linalg.norm(pixels[2:-2, 2:-2].astype(np.float32) - fill, axis=-1)
    inks = [distance / np.linalg.norm(stroke - fill.astype(np.float32)) for stroke in (0.0, 255.0)]  # black, white
    nearest = np.min([np.abs(DIGITS.images / 16.0 - ink).max((1, 2)) for ink in inks], axis=0)
    assert nearest.min() < 0.02  # the card shows one of load_digits' samples, as it is
    return tuple(fill.tolist()), str(DIGITS.target[nearest.argmin()])


def _assert_options_need_the_named_object(example: dict, others_shown: set[str]) -> None:
    """The options: the answer, exactly one attribute another object on screen shows (found only by finding
    the named object), two that no object shows (a step a model can learn first: what is on screen)."""
    options = set(example["options"])
    assert example["options"][example["answer"]] not in others_shown
    assert len(options & others_shown) == 1 and len(options - others_shown) == 3


@pytest.mark.parametrize("family", ["card_digit", "flash_digit"])
def test_digit_answers_are_the_named_cards_pixels(family):
    checked = 0
    for example in (e for e in EXAMPLES if e["family"] == family):
        color = re.search(r"the (\w+) card", example["question"]).group(1)
        (target,) = example["targets"]
        for t in np.flatnonzero(_visible(example)):
            assert _fill_pixels(example, t, scenes.COLORS[color]) == {target}  # the only card of that colour
            assert _read_card(example, t, target) == (scenes.COLORS[color], example["options"][example["answer"]])
            others = {int(m) for m in np.unique(example["masks"][t])} - {0, target}
            assert len(others) == 2  # two other cards
            other_digits = {_read_card(example, t, card)[1] for card in others}
            _assert_options_need_the_named_object(example, other_digits)
            checked += 1
    assert checked >= 8


@pytest.mark.parametrize("family", ["place_color", "ball_color"])
def test_color_answers_are_the_named_places_pixels(family):
    for example in (e for e in EXAMPLES if e["family"] == family):
        place = re.search(r"in the (\w+ \w+)", example["question"]).group(1)
        answer = example["options"][example["answer"]]
        (target,) = example["targets"]
        lamp_colors = {
            c for c in scenes.LAMP_COLORS for t in range(CFG.frames) if _fill_pixels(example, t, scenes.COLORS[c])
        }
        assert len(lamp_colors) == 4
        _assert_options_need_the_named_object(example, lamp_colors - {answer})
        shown = np.flatnonzero(_visible(example))
        for t in shown:
            assert _fill_pixels(example, t, scenes.COLORS[answer]) == {target}
            ys, xs = np.nonzero(example["masks"][t] == target)
            size = CFG.size
            assert scenes.PLACES.index(place) == 2 * int(ys.mean() >= size / 2) + int(xs.mean() >= size / 2)
        if family == "ball_color":  # the lamp is grey but in the frame the ball passes it
            (t,) = shown
            ys, xs = np.nonzero(example["masks"][t] == target)
            for other in set(range(CFG.frames)) - {t}:
                lamp = example["video"][other, ys, xs]
                assert not (lamp == np.asarray(scenes.COLORS[answer], np.uint8)).all(-1).any()
                assert (lamp == np.asarray(scenes.UNLIT, np.uint8)).all(-1).mean() > 0.3


@pytest.mark.parametrize("family", ["moving_color", "needle_color"])
def test_single_object_answers_are_its_color_and_the_moving_one_crosses_the_frame(family):
    for example in (e for e in EXAMPLES if e["family"] == family):
        answer = example["options"][example["answer"]]
        (target,) = example["targets"]
        shown = np.flatnonzero(_visible(example))
        assert set(np.unique(example["masks"]).tolist()) == {0, target}  # nothing else on screen
        for t in shown:
            assert _fill_pixels(example, t, scenes.COLORS[answer]) == {target}
        if family == "moving_color":
            assert len(shown) == CFG.frames
            centres = [np.argwhere(example["masks"][t] == target).mean(0) for t in (0, CFG.frames - 1)]
            assert np.abs(centres[1] - centres[0]).max() >= CFG.size - CFG.object_side - 1


def test_needles_cover_a_few_windows_of_one_frame_and_every_question_is_tagged():
    for example in EXAMPLES:
        visible = _visible(example)
        windows = object_windows(example["masks"], TINY, example["targets"])
        assert example["answerable"] == scenes.ANSWERABLE[example["family"]] in ("static", "temporal")
        if example["answerable"] == "static":  # every frame shows the answer, frame 0 (never pruned) included
            assert visible.all()
        else:  # one frame after the first does, in a few of its 9 windows
            assert visible.sum() == 1 and not visible[0]
            assert 1 <= windows.sum() <= 4 and windows.any(1).sum() == 1
        assert windows.any(1).tolist() == visible.tolist()


def test_options_hold_the_answer_once_among_four():
    for example in EXAMPLES:
        options = example["options"]
        assert len(options) == len(set(options)) == 4 and 0 <= example["answer"] < 4


def test_config_errors_name_the_field():
    config = get_config("families=card_digit+juggling")
    with pytest.raises(ConfigError, match="juggling.*config.data.families"):
        scene_settings(config)
    with pytest.raises(ConfigError, match="digits"):
        scene_settings(get_config("digits=1+2+3"))
    config = get_config("variant=tiny,prune_ratio=0.3")
    assert pipeline_config(config, model_config(config)).prune_ratio == 0.3
    assert scene_settings(config).size == TINY.vision.image_size[0]


def test_token_ids_do_not_depend_on_the_families():
    one_family = scene_settings(get_config("families=card_digit")).vocabulary()
    assert one_family == CFG.vocabulary() and {"ball", "passed", "top"} <= set(one_family)


def test_builder_writes_what_the_generator_makes_and_data_source_reads_it(tmp_path):
    config = get_config("families=flash_digit+ball_color")
    config.data.data_dir = str(tmp_path)
    config.data.train_examples, config.data.eval_examples, config.data.test_examples = 4, 2, 0
    train, tokenizer = source(config, "train")
    assert len(train) == 4 and len(source(config, "validation")[0]) == 2
    settings = scene_settings(config)
    setup_model = model_config(config)
    preprocess = Preprocess(setup_model, pipeline_config(config, setup_model), tokenizer)
    unknown = tokenizer.token_to_id("<unk>")
    for index in range(len(train)):
        record = train[index]
        made = scenes.generate_example(SPLIT_SEEDS["train"], int(record["id"].decode().split("-")[-1]), settings)
        for key in ("video", "masks", "targets"):
            np.testing.assert_array_equal(record[key], made[key], err_msg=key)
        for key in ("question", "family", "answerable", "photo", "camera"):
            assert record[key].decode() == made[key]
        assert [o.decode() for o in record["options"]] == made["options"] and record["answer"] == made["answer"]
        prompt = preprocess.prompt(record, [float(t) for t in record["timestamps"]])
        assert unknown not in prompt["input_ids"]  # the vocabulary holds every word of the prompt
