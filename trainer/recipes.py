"""Long training recipes and the state a campaign keeps between sittings (no TensorFlow here).

A campaign is a training run that outlives the machine it started on: its whole state lives in
one small directory (`models/<run>/`) that is committed to the repository. The learning rate is a
pure function of the epoch position (cosine cycles with warm restarts, SGDR), so a run that
continues on a fresh machine with a fresh optimizer follows exactly the schedule it would have
followed without the interruption.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, model_validator

CAMPAIGN_FILE = "campaign.json"  # config, position and history
WEIGHTS_FILE = "weights.npz"  # float16 weights after the last finished epoch
BEST_FILE = "best.npz"  # float16 weights of the best epoch on PublicTest
TEACHER_FILE = "teacher.npz"  # a distillation's teacher, frozen when the campaign starts
CURVE_FILE = "curve.png"  # learning curve, redrawn after every epoch

Architecture = Literal["vgg", "vgg64", "compact", "compact16", "compact48", "baseline"]  # trainer.models factories
ARCHITECTURES = get_args(Architecture)


class Recipe(BaseModel):
    """Everything that decides what a campaign trains; fixed once the campaign starts."""

    model_config = ConfigDict(extra="forbid")

    architecture: Architecture = "vgg"
    input_size: int = Field(44, ge=32, le=48, description="side of the random crops the network sees")
    cycles: list[int] = Field([20, 40, 80], min_length=1,
                              description="epochs per cosine cycle; each cycle restarts the learning rate")
    warmup_epochs: float = Field(1.0, ge=0, description="linear warm-up at the very start")
    peak_lr: float = Field(0.05, gt=0, le=1)
    peak_decay: float = Field(0.7, gt=0, le=1, description="each restart peaks at this fraction of the last")
    min_lr_fraction: float = Field(0.002, ge=0, lt=1, description="floor of each cycle, fraction of its peak")
    optimizer: Literal["sgd", "adamw"] = "sgd"
    momentum: float = Field(0.9, ge=0, lt=1)
    weight_decay: float = Field(5e-4, ge=0, le=1)
    label_smoothing: float = Field(0.1, ge=0, lt=1)
    batch_size: int = Field(128, ge=1, le=4096)
    crop_min: int = Field(40, ge=24, le=48, description="smallest side (px of the 48-px face) of a random crop")
    crop_max: int = Field(48, ge=24, le=48, description="largest side of a random crop")
    rotation_deg: float = Field(10.0, ge=0, le=45)
    erasing: float = Field(0.5, ge=0, le=1, description="probability of random erasing")
    ferplus_weight: float | None = Field(
        None, ge=0, le=1, description="mix FER+ votes into the targets with this weight of the FER label (None: FER only)")
    teacher: Path | None = Field(None, description="distil from this campaign directory's best weights (copied "
                                                   "into the student's directory when it starts)")
    temperature: float = Field(4.0, gt=0, description="softmax temperature of the distillation targets")
    distill_weight: float = Field(0.7, ge=0, le=1, description="weight of the teacher's loss vs the label loss")
    seed: int = 1337
    checkpoint_every: int = Field(1, ge=1, description="validate and save the state every N epochs (and at "
                                                         "every cycle end); a fast GPU saves time with 10")

    @model_validator(mode="after")
    def _crops(self) -> "Recipe":
        if self.crop_min > self.crop_max:
            raise ValueError(f"crop_min {self.crop_min} is larger than crop_max {self.crop_max}")
        if any(c < 1 for c in self.cycles):
            raise ValueError("every cycle needs at least one epoch")
        return self

    @property
    def total_epochs(self) -> int:
        return sum(self.cycles)

    def cycle_ends(self) -> list[int]:
        """Epoch counts at which a cycle ends (the learning rate is at its floor: a good snapshot)."""
        ends, total = [], 0
        for length in self.cycles:
            total += length
            ends.append(total)
        return ends

    def learning_rate(self, position: float) -> float:
        """Learning rate at `position` epochs from the start (fractional within an epoch)."""
        if position < self.warmup_epochs:
            return self.peak_lr * max(position, 1e-3) / self.warmup_epochs
        start, peak = 0, self.peak_lr
        for index, length in enumerate(self.cycles):
            if position < start + length or index == len(self.cycles) - 1:
                # The first cycle's cosine begins after the warm-up; later ones at their restart.
                begin = max(start, self.warmup_epochs) if index == 0 else start
                progress = min(max((position - begin) / max(start + length - begin, 1e-9), 0.0), 1.0)
                floor = peak * self.min_lr_fraction
                return floor + (peak - floor) * 0.5 * (1 + math.cos(math.pi * progress))
            start += length
            peak *= self.peak_decay
        raise AssertionError("unreachable: the last cycle always answers")


RECIPES: dict[str, Recipe] = {
    # The accurate role: a 2.7M-parameter VGG; 44-px crops, flips, rotation, erasing; SGD-Nesterov
    # with warm restarts. Measured start: 16 epochs of one cosine gave 66.0 % PublicTest.
    "accurate": Recipe(),
    # The fast role: the compact network distilled from the accurate campaign's best weights.
    # AdamW at 3e-3 with decay 1e-2 is what this network trained best with alone (models/default).
    # Cycles of 15 and 30 epochs: ~2 h of CPU with the teacher's forward pass, a snapshot at 15.
    "fast": Recipe(architecture="compact", cycles=[15, 30], optimizer="adamw", peak_lr=3e-3, weight_decay=1e-2,
                   teacher=Path("models/accurate-v1"), temperature=4.0, distill_weight=0.7),
    # The same network and schedule trained alone on the labels (the distillation's control).
    "fast-alone": Recipe(architecture="compact", cycles=[15, 30], optimizer="adamw", peak_lr=3e-3, weight_decay=1e-2),
    # About 300 epochs: the literature's schedule, for one modern GPU.
    "full": Recipe(cycles=[300], batch_size=256, peak_lr=0.1, peak_decay=1.0, checkpoint_every=10),
}


class EpochRecord(BaseModel):
    model_config = ConfigDict(extra="allow")
    epoch: int = Field(ge=1, description="1-based count of epochs finished")
    learning_rate: float
    loss: float
    accuracy: float
    val_top1: float
    val_top2: float
    val_top1_flip: float
    seconds: float = Field(description="wall time per epoch since the previous record")
    finished: str = Field(description="UTC time the epoch ended")


class Stretch(BaseModel):
    """One sitting: the epochs one process trained, the command that ran it, and its wall time."""

    model_config = ConfigDict(extra="allow")
    first_epoch: int
    last_epoch: int
    command: str
    wall_s: float
    machine: str


class CampaignState(BaseModel):
    """`campaign.json`: the recipe, the position, the history; with the two weight files, all a run is."""

    model_config = ConfigDict(extra="forbid")
    name: str
    recipe: Recipe
    data: str = Field(description="dataset path as given (relative paths are relative to the repository)")
    data_fingerprint: str
    ferplus: str | None = Field(None, description="FER+ votes location, when the recipe mixes them in")
    teacher_recipe: Recipe | None = Field(None, description="the teacher's recipe (its weights: teacher.npz)")
    teacher_epoch: int | None = Field(None, description="the teacher campaign's epoch whose weights were taken")
    epochs_done: int = 0
    best_epoch: int | None = None
    best_val_top1: float | None = None
    history: list[EpochRecord] = Field(default_factory=list)
    stretches: list[Stretch] = Field(default_factory=list)

    @property
    def finished(self) -> bool:
        return self.epochs_done >= self.recipe.total_epochs

    @classmethod
    def read(cls, run_dir: Path) -> "CampaignState":
        path = Path(run_dir) / CAMPAIGN_FILE
        if not path.is_file():
            raise FileNotFoundError(f"{run_dir}: no {CAMPAIGN_FILE} (not a training campaign directory)")
        return cls.model_validate_json(path.read_text())

    def write(self, run_dir: Path) -> None:
        path = Path(run_dir) / CAMPAIGN_FILE
        temporary = path.with_suffix(".tmp")
        temporary.write_text(self.model_dump_json(indent=1) + "\n")
        temporary.replace(path)  # atomic: a kill mid-write leaves the previous state
