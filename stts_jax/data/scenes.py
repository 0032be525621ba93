"""A procedural video-QA set where STTS's claims can fail: a moving camera over real photographs, several
small objects per frame, and answers that live in a few windows of the object a question names.

The background of every frame is a crop window of a photograph that ships with scikit-image (`PHOTOS`,
each with its licence; in grey by default, so that a colour always names an object), moved by a camera
that pans, zooms or shakes, so that consecutive frames differ over nearly every window (on synthetic.py's
static backgrounds only the objects change, which made the cosine heuristic an oracle; here a needle still
changes its windows more than the camera does: at k = 0.5 the heuristic kept 88 % of the needle windows
of needle_color, against 100 % there). On top, at fixed places on the screen: cards that each show a
handwritten digit of scikit-learn's 8x8 digits (`load_digits`) on a coloured ground, or lamps (coloured
shapes) in the four corners with a white ball passing between them, or a single shape that crosses the
frame or shows up on one frame only (no relation to find: what a small model learns first). A question
about cards or lamps names one object by one property (its colour, its place) and asks about another (its
digit, its colour), so the answer is a local detail of that object, never a frame-wide attribute. Each
family is tagged (`ANSWERABLE`): "static" where every frame shows the answer (frame 0, which is never
pruned, included), "temporal" where one frame after the first does (a needle over a few windows of it).

Every example stores its per-frame object masks (object id + 1, 0 = background) and `targets`, the ids of
the objects whose pixels hold the answer, so that the share of those windows a pruning keeps is measured
without a model. Everything is a pure function of (seed, index, config).
"""

from __future__ import annotations

import dataclasses
import functools
import re

import numpy as np
import skimage.data
from PIL import Image
from sklearn.datasets import load_digits

from stts_jax.data.prompt import format_question
from stts_jax.data.synthetic import COLORS as SYNTHETIC_COLORS
from stts_jax.data.synthetic import PLACES, SHAPES, shape_mask

# skimage.data photographs that ship inside its wheel (no download), with the licence skimage's own
# docstrings give. Left out: the others bundled there whose docstring names no licence ("no known
# copyright restrictions": coins, immunohistochemistry; none: moon, page, text, motorcycle), or that are
# mostly flat (hubble_deep_field and retina are mostly black, rocket (public domain) mostly clear sky: a
# camera over them changes a third of the windows or fewer).
PHOTOS = {
    "astronaut": "public domain (NASA Great Images database)",
    "chelsea": "CC0 (Stefan van der Walt)",
    "coffee": "CC0 (Rachel Michetti, courtesy of Pikolo Espresso Bar)",
    "camera": "CC0 (Lav Varshney)",
    "brick": "CC0 (CC0Textures)",
    "grass": "CC0 (linolafett, DeviantArt)",
    "gravel": "CC0 (CC0Textures)",
}
DIGITS_LICENCE = "CC BY 4.0 (UCI ML repository: Alpaydin and Kaynak, optical recognition of handwritten digits)"

FAMILIES = ("card_digit", "flash_digit", "place_color", "ball_color", "moving_color", "needle_color")
ANSWERABLE = {  # what a question needs: "static" = any single frame; "temporal" = one frame after the first
    "card_digit": "static",
    "flash_digit": "temporal",
    "place_color": "static",
    "ball_color": "temporal",
    "moving_color": "static",
    "needle_color": "temporal",
}
QUESTIONS = {
    "card_digit": "Which digit is on the {color} card?",
    "flash_digit": "Which digit was on the {color} card that appeared briefly?",
    "place_color": "What color is the object in the {place}?",
    "ball_color": "What color did the object in the {place} turn when the ball passed it?",
    "moving_color": "What color is the moving object?",
    "needle_color": "What color was the object that appeared briefly?",
}
MOTIONS = ("pan", "zoom", "shake")
# synthetic.py's colours and three more: four lamps or three cards on screen leave at least two colours off
# it, so that every question's options can hold the answer, one other object's attribute and two that no
# object shows (see `_options`)
COLORS = {**SYNTHETIC_COLORS, "orange": (245, 140, 30), "cyan": (40, 205, 215), "pink": (240, 120, 185)}
LAMP_COLORS = tuple(c for c in COLORS if c != "white")  # white is the ball's
BALL_COLOR = COLORS["white"]
UNLIT = (110, 110, 110)  # a lamp before and after the ball passes it
OUTLINE = (20, 20, 20)  # every object's border: it stays apart from any photograph behind it
CHAT_WORDS = ("user", "assistant")  # the roles of stts_jax.data.prompt.video_prompt's chat template


@dataclasses.dataclass(frozen=True)
class SceneConfig:
    frames: int = 8
    size: int = 42  # pixels per side: the `tiny` model's input, so that frames are stored as the model sees them
    fps: float = 2.0  # frames are 0.5 s apart, Molmo2's sampling rate
    object_scale: float = 2 / 7  # a card or lamp's side as a share of the frame's (12 px at 42: 2x2 patches of 6)
    ball_scale: float = 4 / 21  # the ball's diameter as a share of the frame's (8 px at 42)
    camera_travel: float = 1.0  # how far the camera moves over the clip, in crop-window sides (pan)
    families: tuple[str, ...] = FAMILIES  # example i asks a question of family families[i % len(families)]
    digits: tuple[int, ...] = tuple(range(10))  # the digits cards show (at least 4: the options)
    digit_styles: int = 0  # handwritten samples per digit the cards draw from (0: all ~180 of load_digits)
    photos: tuple[str, ...] = tuple(PHOTOS)
    photo_saturation: float = 0.0  # 1: the photographs' own colours; 0: grey, so that a colour names an object

    def __post_init__(self):
        unknown = [f for f in self.families if f not in FAMILIES]
        if unknown or not self.families:
            raise ValueError(f"scene families {list(self.families)}: each must be one of {list(FAMILIES)}")
        if len(set(self.digits)) < 4 or not set(self.digits) <= set(range(10)):
            raise ValueError(f"scene digits {list(self.digits)}: at least 4 distinct digits in 0..9 (the options)")
        if not self.photos or not set(self.photos) <= set(PHOTOS):
            raise ValueError(f"scene photos {list(self.photos)}: each must be one of {list(PHOTOS)}")
        if self.frames < 3:
            raise ValueError(f"scene frames {self.frames} must be >= 3 (a temporal question's event lies in 1..T-1)")
        if self.object_side < 8 or 2 * self.object_side + self.ball_side > self.size:
            raise ValueError(
                f"scene size {self.size} with object_scale {self.object_scale} and ball_scale {self.ball_scale}: "
                "objects need >= 8 px (a digit's 8x8) and two objects and the ball must fit across the frame"
            )
        if not 0.0 <= self.photo_saturation <= 1.0:
            raise ValueError(f"scene photo_saturation {self.photo_saturation} must be in [0, 1]")
        if self.digit_styles < 0 or self.camera_travel <= 0:
            raise ValueError(
                f"scene digit_styles {self.digit_styles} must be >= 0, camera_travel {self.camera_travel} > 0"
            )

    @property
    def object_side(self) -> int:
        return round(self.size * self.object_scale)

    @property
    def ball_side(self) -> int:
        return round(self.size * self.ball_scale)

    def vocabulary(self) -> list[str]:
        """Every word of every prompt of every family (the word-level tokenizer's vocabulary: the same token
        ids whichever families a run trains or evaluates on)."""
        options = list(COLORS)[:4]  # any 4: the lettered lines and the instruction; every color is added below
        texts = [
            format_question(QUESTIONS[f].format(color=c, place=p), options)
            for f in FAMILIES
            for c in COLORS
            for p in PLACES
        ]
        words = {w for text in texts for w in re.findall(r"[a-z]+", text.lower())}
        return sorted(words | set(COLORS) | set(CHAT_WORDS))


# -- what the objects and backgrounds are made of -----------------------------------------------------------


@functools.cache
def _world(name: str, size: int, saturation: float) -> np.ndarray:
    """The photograph as float32 RGB [H, W, 3], scaled (with antialiasing) so that its shorter side is
    4 frame sides: crop windows of 1-1.5 frame sides then resample it at most 1.5:1. Its colours are mixed
    with its luminance: `saturation` 0 is grey."""
    photo = getattr(skimage.data, name)()
    image = Image.fromarray(photo).convert("RGB")
    scale = 4 * size / min(image.size)
    image = image.resize((round(image.width * scale), round(image.height * scale)), Image.Resampling.LANCZOS)
    rgb = np.asarray(image, np.float32)
    grey = rgb @ np.asarray([0.299, 0.587, 0.114], np.float32)
    return saturation * rgb + (1 - saturation) * grey[..., None]


@functools.cache
def _digit_sprites(styles: int) -> tuple[tuple[np.ndarray, ...], ...]:
    """Per digit 0..9, its handwritten 8x8 samples as ink in [0, 1] (the first `styles` of each; 0: all)."""
    digits = load_digits()
    per_digit = [digits.images[digits.target == d] / 16.0 for d in range(10)]
    return tuple(tuple(s[:styles] if styles else s) for s in per_digit)


def _resample(image: np.ndarray, size: int) -> np.ndarray:
    """[h, w(, c)] -> [size, size(, c)], bilinear with half-pixel centres (an 8x8 digit at 8 px is itself)."""
    h, w = image.shape[:2]
    ys = np.clip((np.arange(size) + 0.5) * h / size - 0.5, 0, h - 1)
    xs = np.clip((np.arange(size) + 0.5) * w / size - 0.5, 0, w - 1)
    return _bilinear(image, ys[:, None], xs[None, :])


def _bilinear(image: np.ndarray, ys: np.ndarray, xs: np.ndarray) -> np.ndarray:
    """image sampled at float coordinates (broadcast ys against xs; clamped to the image)."""
    h, w = image.shape[:2]
    ys, xs = np.clip(ys, 0, h - 1), np.clip(xs, 0, w - 1)
    y0, x0 = np.minimum(np.floor(ys).astype(int), h - 2), np.minimum(np.floor(xs).astype(int), w - 2)
    wy, wx = ys - y0, xs - x0
    if image.ndim == 3:
        wy, wx = wy[..., None], wx[..., None]
    top = image[y0, x0] * (1 - wx) + image[y0, x0 + 1] * wx
    bottom = image[y0 + 1, x0] * (1 - wx) + image[y0 + 1, x0 + 1] * wx
    return top * (1 - wy) + bottom * wy


def _outlined(shape: np.ndarray) -> np.ndarray:
    """A boolean shape's border pixels (those with a 4-neighbour outside the shape)."""
    padded = np.pad(shape, 1)
    inner = padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:]
    return shape & ~inner


def _luminance(color: tuple[int, int, int]) -> float:
    return 0.299 * color[0] + 0.587 * color[1] + 0.114 * color[2]


@dataclasses.dataclass
class _Sprite:
    """An object on screen: its pixels [s, s, 3], shape [s, s] bool, and top-left corner per frame (None: off)."""

    pixels: np.ndarray
    shape: np.ndarray
    places: list[tuple[int, int] | None]

    def visible(self, t: int) -> bool:
        return self.places[t] is not None


def _card(color: str, ink: np.ndarray, side: int) -> tuple[np.ndarray, np.ndarray]:
    """A card: `color` ground, a dark border, the digit's ink [8, 8] in black or white (whichever reads on it)."""
    border = max(1, side // 12)
    box = side - 4 * border
    fill = np.asarray(COLORS[color], np.float32)
    stroke = np.zeros(3, np.float32) if _luminance(COLORS[color]) > 120 else np.full(3, 255, np.float32)
    pixels = np.broadcast_to(fill, (side, side, 3)).copy()
    alpha = _resample(ink, box)[..., None]
    pixels[2 * border : 2 * border + box, 2 * border : 2 * border + box] = fill * (1 - alpha) + stroke * alpha
    square = np.ones((side, side), bool)
    pixels[_outlined(square)] = OUTLINE
    return pixels, square


def _shape_sprite(shape_name: str, color: tuple[int, int, int], side: int) -> tuple[np.ndarray, np.ndarray]:
    shape = shape_mask(shape_name, side)
    pixels = np.broadcast_to(np.asarray(color, np.float32), (side, side, 3)).copy()
    pixels[_outlined(shape)] = OUTLINE
    return pixels, shape


# -- the camera ---------------------------------------------------------------------------------------------


def _camera(rng: np.random.Generator, cfg: SceneConfig, world: np.ndarray) -> tuple[str, np.ndarray]:
    """A camera path over the photograph: (motion, [T, 3] crop windows as (x, y, side) in its pixels).

    pan: a straight move of `camera_travel` sides; zoom: the side scales by 0.6-0.75 (in or out) while the
    centre drifts 3/4 as far as a pan (a zoom alone leaves the centre of the frame nearly unchanged);
    shake: a hand-held random walk, each step 10-20 % of a side in a new direction."""
    motion = str(rng.choice(MOTIONS))
    height, width = world.shape[:2]
    u = np.linspace(0, 1, cfg.frames)
    side0 = cfg.size * rng.uniform(1.0, 1.5)
    if motion == "zoom":
        factor = rng.uniform(0.6, 0.75)
        sides = side0 * (factor ** (u if rng.random() < 0.5 else 1 - u))
    else:
        sides = np.full(cfg.frames, side0)
    if motion == "shake":
        steps = rng.uniform(0.1, 0.2, cfg.frames - 1) * side0
        angles = rng.uniform(0, 2 * np.pi, cfg.frames - 1)
        offsets = np.concatenate(
            [[[0.0, 0.0]], np.cumsum(np.stack([np.cos(angles), np.sin(angles)], -1) * steps[:, None], 0)]
        )
    else:
        travel = cfg.camera_travel * side0 * (0.75 if motion == "zoom" else rng.uniform(0.8, 1.2))
        angle = rng.uniform(0, 2 * np.pi)
        offsets = u[:, None] * travel * np.array([np.cos(angle), np.sin(angle)])
    # the path's centres, shifted into the photograph (shrunk where it is too long to fit)
    centres = offsets - offsets.mean(0)
    room = np.array([width, height]) - sides.max()
    extent = centres.max(0) - centres.min(0)
    centres *= np.minimum(1.0, room / np.maximum(extent, 1e-6)).min()
    low = sides.max() / 2 - centres.min(0)
    high = np.array([width, height]) - sides.max() / 2 - centres.max(0)
    centres += low + rng.uniform(0, 1, 2) * np.maximum(high - low, 0)
    return motion, np.concatenate([centres - sides[:, None] / 2, sides[:, None]], 1)


def _backgrounds(world: np.ndarray, windows: np.ndarray, size: int) -> np.ndarray:
    """[T, size, size, 3] float: each crop window (x, y, side) resampled to the frame, bilinear."""
    grid = (np.arange(size) + 0.5) / size
    frames = []
    for x, y, side in windows:
        frames.append(_bilinear(world, (y + grid * side - 0.5)[:, None], (x + grid * side - 0.5)[None, :]))
    return np.stack(frames)


# -- a scene ------------------------------------------------------------------------------------------------


class _Scene:
    """Sprites on screen and where they are free to go."""

    def __init__(self, rng: np.random.Generator, cfg: SceneConfig):
        self.rng, self.cfg = rng, cfg
        self.sprites: list[_Sprite] = []

    def add(self, pixels: np.ndarray, shape: np.ndarray, places: list[tuple[int, int] | None]) -> int:
        """The new sprite's id in the masks (its index + 1)."""
        self.sprites.append(_Sprite(pixels, shape, places))
        return len(self.sprites)

    def free_spot(self, taken: list[tuple[int, int]]) -> tuple[int, int]:
        """A top-left corner for an object that keeps a pixel apart from every corner in `taken`."""
        side, size = self.cfg.object_side, self.cfg.size
        for _ in range(500):
            x, y = (int(v) for v in self.rng.integers(0, size - side + 1, 2))
            if all(abs(x - px) > side or abs(y - py) > side for px, py in taken):
                taken.append((x, y))
                return x, y
        raise RuntimeError("no free spot for a card; lower object_scale")

    def render(self, background: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Frames [T, H, W, 3] uint8 and masks [T, H, W] uint8 (sprite id, 0 = background); later sprites on top."""
        video = background.copy()
        masks = np.zeros(video.shape[:3], np.uint8)
        size = self.cfg.size
        for k, sprite in enumerate(self.sprites, start=1):
            side = sprite.shape.shape[0]
            for t, place in enumerate(sprite.places):
                if place is None:
                    continue
                x0, y0 = place
                xa, ya, x1, y1 = max(x0, 0), max(y0, 0), min(x0 + side, size), min(y0 + side, size)
                if x1 <= xa or y1 <= ya:
                    continue
                on = sprite.shape[ya - y0 : y1 - y0, xa - x0 : x1 - x0]
                video[t, ya:y1, xa:x1][on] = sprite.pixels[ya - y0 : y1 - y0, xa - x0 : x1 - x0][on]
                masks[t, ya:y1, xa:x1][on] = k
        return np.clip(np.round(video), 0, 255).astype(np.uint8), masks


def _options(rng: np.random.Generator, answer: str, shown: list[str], pool: list[str]) -> tuple[list[str], int]:
    """4 options, shuffled: the answer, the attribute of one other object on screen (a hard negative: knowing
    what the frames show is not enough, the question's object must be found), and two that no object shows
    (so that a model learns what is on screen before it learns which object is which: 1 in 2 right).
    Other objects' attributes fill in where `pool` has too few unshown values."""
    others = [v for v in shown if v != answer]
    unshown = [v for v in pool if v != answer and v not in shown]
    picked_other = [others.pop(int(rng.integers(len(others))))] if others else []
    rest = [*(unshown[i] for i in rng.permutation(len(unshown))), *others]
    picks = [answer, *picked_other, *rest][:4]
    options = [picks[i] for i in rng.permutation(4)]
    return options, options.index(answer)


def _cards(scene: _Scene, family: str) -> tuple[str, list[str], int, list[int]]:
    """card_digit: three cards of distinct colours and digits on every frame, one named by its colour.
    flash_digit: two such cards, and the named one on a single frame of 1..T-1."""
    rng, cfg = scene.rng, scene.cfg
    colors = [str(c) for c in rng.choice(list(COLORS), 3, replace=False)]
    digits = [int(d) for d in rng.choice(cfg.digits, 3, replace=False)]
    sprites = _digit_sprites(cfg.digit_styles)
    taken: list[tuple[int, int]] = []
    ids = []
    flash = int(rng.integers(1, cfg.frames))
    for k, (color, digit) in enumerate(zip(colors, digits, strict=True)):
        ink = sprites[digit][int(rng.integers(len(sprites[digit])))]
        spot = scene.free_spot(taken)
        places = [spot] * cfg.frames
        if family == "flash_digit" and k == 0:
            places = [spot if t == flash else None for t in range(cfg.frames)]
        ids.append(scene.add(*_card(color, ink, cfg.object_side), places))
    options, answer = _options(rng, str(digits[0]), [str(d) for d in digits[1:]], [str(d) for d in cfg.digits])
    return QUESTIONS[family].format(color=colors[0]), options, answer, [ids[0]]


def _lamps(scene: _Scene, family: str) -> tuple[str, list[str], int, list[int]]:
    """Four lamps (shapes) near the corners and a white ball crossing between them at constant speed.
    place_color: the lamps are lit from start to end. ball_color: they are grey but in the frame where the
    ball passes their column (or row), where each lights in its own colour; the ball passes the first pair
    at a frame of 1..T-2 and the second later. The scene is drawn for a ball moving right, then turned by
    one of the square's 8 symmetries (the ball then moves in any of 4 directions, past rows or columns)."""
    rng, cfg = scene.rng, scene.cfg
    size, side, ball = cfg.size, cfg.object_side, cfg.ball_side
    slack = (size - ball) // 2 - side  # how far a lamp may sit from its corner, the ball's lane kept free
    xs = [int(rng.integers(0, slack + 1)), size - side - int(rng.integers(0, slack + 1))]  # left, right column
    ys = [int(rng.integers(0, slack + 1)), size - side - int(rng.integers(0, slack + 1))]  # top, bottom row
    colors = [str(c) for c in rng.choice(LAMP_COLORS, 4, replace=False)]
    shapes = [str(s) for s in rng.choice(SHAPES, 4)]
    first = int(rng.integers(1, cfg.frames - 1))
    passes = [first, int(rng.integers(first + 1, cfg.frames))]  # the frames the ball passes each column
    centres = [x + side / 2 for x in xs]
    speed = (centres[1] - centres[0]) / (passes[1] - passes[0])
    lane = (size - ball) / 2
    ball_path = [(centres[0] + speed * (t - passes[0]) - ball / 2, lane) for t in range(cfg.frames)]
    symmetry = int(rng.integers(8))
    turn = lambda x, y, s: _turn(x, y, s, size, symmetry)

    lit_ids, places = [], []
    for k in range(4):
        column, row = k % 2, k // 2
        corner = turn(xs[column], ys[row], side)
        places.append(_place_of(corner, side, size))
        lit = [corner] * cfg.frames
        if family == "ball_color":
            lit = [corner if t == passes[column] else None for t in range(cfg.frames)]
            unlit = [None if t == passes[column] else corner for t in range(cfg.frames)]
            scene.add(*_shape_sprite(shapes[k], UNLIT, side), unlit)
        lit_ids.append(scene.add(*_shape_sprite(shapes[k], COLORS[colors[k]], side), lit))
    scene.add(*_shape_sprite("circle", BALL_COLOR, ball), [turn(round(x), round(y), ball) for x, y in ball_path])
    asked = int(rng.integers(4))
    options, answer = _options(rng, colors[asked], colors, list(LAMP_COLORS))
    return QUESTIONS[family].format(place=places[asked]), options, answer, [lit_ids[asked]]


def _single(scene: _Scene, family: str) -> tuple[str, list[str], int, list[int]]:
    """One coloured shape and nothing else: moving_color, crossing the frame over every frame at constant
    speed (the control no pruning should hurt); needle_color, still, on a single frame of 1..T-1."""
    rng, cfg = scene.rng, scene.cfg
    color, shape, side = str(rng.choice(LAMP_COLORS)), str(rng.choice(SHAPES)), cfg.object_side
    if family == "moving_color":
        start, end = rng.uniform(0, cfg.size - side, (2, 2))
        if rng.random() < 0.5:  # from one edge to the opposite one, across most of the frame
            start[0], end[0] = 0, cfg.size - side
        else:
            start[1], end[1] = 0, cfg.size - side
        if rng.random() < 0.5:
            start, end = end, start
        u = np.linspace(0, 1, cfg.frames)[:, None]
        places = [tuple(int(round(v)) for v in p) for p in start + u * (end - start)]
    else:
        flash, spot = int(rng.integers(1, cfg.frames)), scene.free_spot([])
        places = [spot if t == flash else None for t in range(cfg.frames)]
    target = scene.add(*_shape_sprite(shape, COLORS[color], side), places)
    options, answer = _options(rng, color, [], list(LAMP_COLORS))
    return QUESTIONS[family], options, answer, [target]


def _turn(x: int, y: int, side: int, size: int, symmetry: int) -> tuple[int, int]:
    """The top-left corner of a `side` square at (x, y) after symmetry 0..7 of the [size]^2 frame
    (bit 0: mirror left-right, bit 1: mirror top-bottom, bit 2: swap the axes, applied in that order)."""
    if symmetry & 1:
        x = size - side - x
    if symmetry & 2:
        y = size - side - y
    if symmetry & 4:
        x, y = y, x
    return x, y


def _place_of(corner: tuple[int, int], side: int, size: int) -> str:
    """The PLACES name of the quadrant holding a `side` square's centre."""
    x, y = corner
    return PLACES[int(y + side / 2 >= size / 2) * 2 + int(x + side / 2 >= size / 2)]


def generate_example(seed: int, index: int, cfg: SceneConfig) -> dict:
    """One example: video [T, H, W, 3] uint8, masks [T, H, W] uint8, targets [n] int32 (mask ids that hold
    the answer), question, options, answer, family, answerable ("static" | "temporal"), photo, camera."""
    rng = np.random.default_rng([seed, index])
    family = cfg.families[index % len(cfg.families)]
    photo = str(rng.choice(cfg.photos))
    world = _world(photo, cfg.size, cfg.photo_saturation)
    motion, windows = _camera(rng, cfg, world)
    scene = _Scene(rng, cfg)
    build = (
        _cards
        if family in ("card_digit", "flash_digit")
        else _single
        if family in ("moving_color", "needle_color")
        else _lamps
    )
    question, options, answer, targets = build(scene, family)
    video, masks = scene.render(_backgrounds(world, windows, cfg.size))
    return {
        "id": f"scenes-{seed}-{index}",
        "video": video,
        "masks": masks,
        "targets": np.asarray(targets, np.int32),
        "fps": np.float32(cfg.fps),
        "question": question,
        "options": options,
        "answer": np.int32(answer),
        "family": family,
        "answerable": ANSWERABLE[family],
        "photo": photo,
        "camera": motion,
    }
