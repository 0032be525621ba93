"""A procedurally generated video-QA set where token pruning matters the way it does on real video.

Each video is a static textured background (most windows are redundant across frames) with a few
objects that stay still, move at constant velocity, or show up for one or two frames only
("needles"). Every example is one 4-option multiple-choice question of a tagged family, and stores
per-frame object masks so that a scorer's quality (the share of object windows it keeps) can be
measured without a model. Everything is a pure function of (seed, index, config).
"""

from __future__ import annotations

import dataclasses

import numpy as np

COLORS = {
    "red": (220, 40, 40),
    "green": (40, 190, 60),
    "blue": (50, 80, 230),
    "yellow": (235, 215, 40),
    "white": (245, 245, 245),
    "purple": (150, 60, 200),
}
SHAPES = ("square", "circle", "triangle")
DIRECTIONS = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1)}
PLACES = ("top left", "top right", "bottom left", "bottom right")
FAMILIES = ("moving_color", "direction", "needle", "count", "static_place", "first_appearance")
# Not in the default mix (which stays as it was): the color of the one object that appears for
# `needle_frames` frames only. With max_distractors = 0 the question needs no relation between objects
# or frames, only the frames that hold the needle: learnable by a small model from scratch, and what
# token pruning can lose.
EXTRA_FAMILIES = ("needle_color",)
ALL_FAMILIES = FAMILIES + EXTRA_FAMILIES
QUESTION_WORDS = (
    "what color is the moving object which direction does the move which object appeared only briefly "
    "how many objects are in video where is which appeared first answer with option s letter from given "
    "choices directly user assistant a b c d one two three four five"
).split()
EXTRA_WORDS = ("was", "that")  # after every other word: the token ids of the default set stay as they were


@dataclasses.dataclass(frozen=True)
class SyntheticConfig:
    frames: int = 16
    size: int = 64  # pixels per side
    fps: float = 2.0  # frames are 0.5 s apart, Molmo2's sampling rate
    object_size: int = 12  # pixels per side of an object
    max_distractors: int = 2  # still objects besides the ones the question is about
    needle_frames: int = 1  # how long a needle is on screen
    background_contrast: float = 40.0  # texture amplitude (grey levels)
    families: tuple[str, ...] = FAMILIES  # example i asks a question of family families[i % len(families)]

    def __post_init__(self):
        unknown = [f for f in self.families if f not in ALL_FAMILIES]
        if unknown or not self.families:
            raise ValueError(f"synthetic families {list(self.families)}: each must be one of {list(ALL_FAMILIES)}")
        if self.max_distractors < 0 or self.needle_frames < 1:
            raise ValueError(
                f"synthetic max_distractors {self.max_distractors} must be >= 0, "
                f"needle_frames {self.needle_frames} >= 1"
            )
        # a needle starts after frame 0 and ends by the last; first_appearance draws two distinct start
        # frames before the last
        least = max(
            self.needle_frames + 1 if {"needle", "needle_color"} & set(self.families) else 1,
            3 if "first_appearance" in self.families else 1,
        )
        if self.frames < least:
            raise ValueError(f"synthetic frames {self.frames}: families {list(self.families)} need >= {least}")

    def vocabulary(self) -> list[str]:
        words = list(QUESTION_WORDS) + list(COLORS) + list(SHAPES) + list(DIRECTIONS)
        return words + [w for place in PLACES for w in place.split()] + list(EXTRA_WORDS)


@dataclasses.dataclass
class _Object:
    color: str
    shape: str
    x: float
    y: float
    vx: float = 0.0
    vy: float = 0.0
    first: int = 0  # first visible frame
    last: int = 10**9  # last visible frame

    @property
    def name(self) -> str:
        return f"{self.color} {self.shape}"


def shape_mask(shape: str, size: int) -> np.ndarray:
    yy, xx = np.mgrid[0:size, 0:size] + 0.5
    if shape == "square":
        return np.ones((size, size), bool)
    if shape == "circle":
        return (xx - size / 2) ** 2 + (yy - size / 2) ** 2 <= (size / 2) ** 2
    return yy >= 2 * np.abs(xx - size / 2)  # triangle pointing up


def _background(rng: np.random.Generator, cfg: SyntheticConfig) -> np.ndarray:
    """A smooth static texture: a few random low-frequency waves around a random grey."""
    yy, xx = np.mgrid[0 : cfg.size, 0 : cfg.size] / cfg.size
    base = rng.uniform(70, 150)
    texture = np.zeros((cfg.size, cfg.size))
    for _ in range(4):
        fx, fy, phase = rng.uniform(0.5, 4, 2).tolist() + [rng.uniform(0, 2 * np.pi)]
        texture += np.sin(2 * np.pi * (fx * xx + fy * yy) + phase)
    grey = base + cfg.background_contrast * texture / 4
    tint = rng.uniform(0.85, 1.15, 3)
    return np.clip(grey[..., None] * tint, 0, 255)


def _render(background: np.ndarray, objects: list[_Object], cfg: SyntheticConfig) -> tuple[np.ndarray, np.ndarray]:
    """Frames [T, H, W, 3] uint8 and object masks [T, H, W] uint8 (object index + 1, 0 = background)."""
    video = np.repeat(background[None], cfg.frames, axis=0)
    masks = np.zeros((cfg.frames, cfg.size, cfg.size), np.uint8)
    s = cfg.object_size
    for k, obj in enumerate(objects, start=1):
        shape = shape_mask(obj.shape, s)
        for t in range(max(obj.first, 0), min(obj.last, cfg.frames - 1) + 1):
            x0, y0 = int(round(obj.x + obj.vx * t)), int(round(obj.y + obj.vy * t))
            x1, y1 = min(x0 + s, cfg.size), min(y0 + s, cfg.size)
            xa, ya = max(x0, 0), max(y0, 0)
            if x1 <= xa or y1 <= ya:
                continue
            m = shape[ya - y0 : y1 - y0, xa - x0 : x1 - x0]
            video[t, ya:y1, xa:x1][m] = COLORS[obj.color]
            masks[t, ya:y1, xa:x1][m] = k
    return video.astype(np.uint8), masks


class _Scene:
    """Draws objects with distinct (color, shape) pairs at non-overlapping still positions."""

    def __init__(self, rng: np.random.Generator, cfg: SyntheticConfig):
        self.rng, self.cfg = rng, cfg
        self.objects: list[_Object] = []
        self.used: set[tuple[str, str]] = set()
        self.places: list[tuple[float, float]] = []

    def new_identity(self, avoid_colors: set[str] = frozenset()) -> tuple[str, str]:
        while True:
            color = str(self.rng.choice([c for c in COLORS if c not in avoid_colors]))
            shape = str(self.rng.choice(SHAPES))
            if (color, shape) not in self.used:
                self.used.add((color, shape))
                return color, shape

    def free_spot(self, quadrant: int | None = None) -> tuple[float, float]:
        s, size = self.cfg.object_size, self.cfg.size
        for _ in range(200):
            if quadrant is None:
                x, y = self.rng.uniform(0, size - s, 2)
            else:
                half = size / 2
                x = self.rng.uniform(0, half - s) + (quadrant % 2) * half
                y = self.rng.uniform(0, half - s) + (quadrant // 2) * half
            if all(abs(x - px) >= s or abs(y - py) >= s for px, py in self.places):
                self.places.append((x, y))
                return float(x), float(y)
        raise RuntimeError("no free spot; lower object_size or max_distractors")

    def add(self, obj: _Object) -> _Object:
        self.objects.append(obj)
        return obj

    def still(self, n: int, **kw) -> list[_Object]:
        return [self.add(_Object(*self.new_identity(), *self.free_spot(), **kw)) for _ in range(n)]


def _options(rng: np.random.Generator, correct: str, pool: list[str]) -> tuple[list[str], int]:
    wrong = [p for p in dict.fromkeys(pool) if p != correct]
    picks = list(rng.choice(wrong, size=3, replace=False)) + [correct]
    rng.shuffle(picks)
    return [str(p) for p in picks], picks.index(correct)


def generate_example(seed: int, index: int, cfg: SyntheticConfig) -> dict:
    """One example: video [T, H, W, 3] uint8, masks [T, H, W] uint8, question, options, answer, family."""
    rng = np.random.default_rng([seed, index])
    family = cfg.families[index % len(cfg.families)]
    scene = _Scene(rng, cfg)
    t_last, size, s = cfg.frames - 1, cfg.size, cfg.object_size
    speed = (size - s) / max(t_last, 1) * 0.8  # crosses most of the frame over the video

    if family == "moving_color":
        color, shape = scene.new_identity()
        x, y = (0.0, rng.uniform(0, size - s)) if rng.random() < 0.5 else (rng.uniform(0, size - s), 0.0)
        horizontal = x == 0.0
        scene.add(_Object(color, shape, x, y, vx=speed if horizontal else 0, vy=0 if horizontal else speed))
        scene.still(rng.integers(0, cfg.max_distractors + 1))
        question = "What color is the moving object?"
        options, answer = _options(rng, color, list(COLORS))
    elif family == "direction":
        direction = str(rng.choice(list(DIRECTIONS)))
        dx, dy = DIRECTIONS[direction]
        color, shape = scene.new_identity()
        start = {"right": (0, None), "left": (size - s, None), "down": (None, 0), "up": (None, size - s)}[direction]
        x = start[0] if start[0] is not None else rng.uniform(0, size - s)
        y = start[1] if start[1] is not None else rng.uniform(0, size - s)
        scene.add(_Object(color, shape, x, y, vx=dx * speed, vy=dy * speed))
        scene.still(rng.integers(0, cfg.max_distractors + 1))
        question = f"Which direction does the {color} {shape} move?"
        options, answer = list(DIRECTIONS), list(DIRECTIONS).index(direction)
    elif family == "needle":
        still = scene.still(1 + rng.integers(0, cfg.max_distractors + 1))
        first = int(rng.integers(1, cfg.frames - cfg.needle_frames + 1))
        needle = scene.add(
            _Object(*scene.new_identity(), *scene.free_spot(), first=first, last=first + cfg.needle_frames - 1)
        )
        question = "Which object appeared only briefly?"
        pool = [o.name for o in still] + [f"{c} {sh}" for c in COLORS for sh in SHAPES]
        options, answer = _options(rng, needle.name, pool)
    elif family == "needle_color":
        still = scene.still(rng.integers(0, cfg.max_distractors + 1))
        color, shape = scene.new_identity(avoid_colors={o.color for o in still})
        first = int(rng.integers(1, cfg.frames - cfg.needle_frames + 1))
        scene.add(_Object(color, shape, *scene.free_spot(), first=first, last=first + cfg.needle_frames - 1))
        question = "What color was the object that appeared briefly?"
        options, answer = _options(rng, color, list(COLORS))
    elif family == "count":
        count = int(rng.integers(1, 5))
        scene.still(count)
        question = "How many objects are in the video?"
        options, answer = ["one", "two", "three", "four"], count - 1
    elif family == "static_place":
        quadrant = int(rng.integers(0, 4))
        target = scene.add(_Object(*scene.new_identity(), *scene.free_spot(quadrant)))
        scene.still(rng.integers(0, cfg.max_distractors + 1))
        question = f"Where is the {target.name}?"
        options, answer = list(PLACES), quadrant
    else:  # first_appearance
        starts = rng.choice(np.arange(0, cfg.frames - 1), size=2, replace=False)
        objs = [scene.add(_Object(*scene.new_identity(), *scene.free_spot(), first=int(f))) for f in sorted(starts)]
        question = "Which object appeared first?"
        pool = [o.name for o in objs] + [f"{c} {sh}" for c in COLORS for sh in SHAPES]
        options, answer = _options(rng, objs[0].name, pool)

    video, masks = _render(_background(rng, cfg), scene.objects, cfg)
    return {
        "id": f"synthetic-{seed}-{index}",
        "video": video,
        "masks": masks,
        "fps": np.float32(cfg.fps),
        "question": question,
        "options": options,
        "answer": np.int32(answer),
        "family": family,
    }
