"""Turn a campaign's best weights into a servable model directory, evaluated and reported.

The exported LiteRT graph takes the network's own input side (the central window of the 48-px crop
for networks trained on random crops); the metadata says so (`Preprocess.network_size`) and the
runtime crops accordingly, so every serving path (plain, flip, ten-crop) uses the one graph.

Other campaigns may join as an ensemble (`also`): their best networks see the same window, and the
exported graph averages their probabilities. Networks trained differently disagree on a fifth of
PublicTest's faces, and the average beats each of them (docs/training.md has the figures); being one
graph, it needs nothing new from the runtime, and its throughput is measured like any model's.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Sequence

import keras

from shared.model_runtime import Preprocess, read_metadata
from shared.settings import REPO_ROOT
from trainer.campaign import CampaignError, build_model, load_splits, load_weights
from trainer.curves import draw_curve
from trainer.export import FLOAT16_ROUNDTRIP_TOLERANCE, check_roundtrip, export_model, update_metadata
from trainer.recipes import BEST_FILE, CURVE_FILE, CampaignState

log = logging.getLogger(__name__)

FRAMING_SOURCE = REPO_ROOT / "models" / "default"  # FER-2013 framing, shared by every FER-trained model


def framing_record(framing_from: Path = FRAMING_SOURCE) -> dict:
    """How the shared framing was calibrated (`emotion calibrate-framing`'s record), kept with every model
    that crops with it."""
    path = Path(framing_from) / "metadata.json"
    return json.loads(path.read_text()).get("framing_calibration") or {} if path.exists() else {}


def campaign_preprocess(state: CampaignState, framing_from: Path = FRAMING_SOURCE) -> Preprocess:
    """The crop every FER-trained model expects (taken from the shipped model), with this network's window."""
    base = read_metadata(framing_from).preprocess if (Path(framing_from) / "metadata.json").exists() else Preprocess()
    return base.model_copy(update={"input_size": 48, "network_size": state.recipe.input_size})


def ship_campaign(run_dir: Path, out_dir: Path, *, version: str | None = None, require_face: bool = False,
                  also: Sequence[Path] = ()) -> Path:
    """Export `run_dir`'s best weights (averaged with those of the campaigns in `also`, if any) to
    `out_dir` and write its metrics, report and learning curve."""
    from trainer.evaluate import evaluate, metrics_summary, write_report

    run_dir, out_dir = Path(run_dir), Path(out_dir)
    run_dirs = [run_dir, *map(Path, also)]
    states = [_finished_state(d) for d in run_dirs]
    state = states[0]
    for other in states[1:]:
        if other.recipe.input_size != state.recipe.input_size:
            raise CampaignError(f"{other.name} sees {other.recipe.input_size}-px windows and {state.name} "
                                f"{state.recipe.input_size}-px ones: an ensemble's members must match")
    version = version or "-with-".join(f"{s.name}-e{s.best_epoch}" for s in states)
    preprocess, calibration = campaign_preprocess(state), framing_record()  # read first: out_dir may be the source
    networks = []
    for member_dir, member in zip(run_dirs, states):
        network = build_model(member.recipe)
        load_weights(network, member_dir / BEST_FILE)
        networks.append(network)
    model = networks[0] if len(networks) == 1 else average_of(networks)
    training_seconds = sum(r.seconds for s in states for r in s.history)
    export_model(model, out_dir, version=version, architecture="+".join(s.recipe.architecture for s in states),
                 metrics={}, data_fingerprint=state.data_fingerprint, training_seconds=training_seconds,
                 train_config=state.recipe.model_dump(mode="json"), preprocess=preprocess,
                 keep_keras=False, float16_weights=True)  # 5 MB instead of 11 for the VGG: it is committed
    difference = check_roundtrip(out_dir, model, atol=FLOAT16_ROUNDTRIP_TOLERANCE)

    _, public = load_splits(state.data, state.recipe, state.ferplus)
    results = {"PublicTest": evaluate(out_dir, public, tta=True)}
    if require_face:
        from trainer.cleaning import drop_faceless

        filtered = drop_faceless(public)
        filtered.name = "PublicTest-faces"  # the original project's protocol: images where a face is found
        results[filtered.name] = evaluate(out_dir, filtered, tta=True, measure_throughput=False)
    campaign = {"name": state.name, "run_dir": str(run_dir), "epochs_done": state.epochs_done,
                "total_epochs": state.recipe.total_epochs, "best_epoch": state.best_epoch,
                "stretches": [s.model_dump() for s in state.stretches]}
    if also:
        campaign["ensemble"] = [{"name": s.name, "run_dir": str(d), "best_epoch": s.best_epoch,
                                 "architecture": s.recipe.architecture}
                                for d, s in zip(run_dirs, states)]
    update_metadata(out_dir, metrics={name: metrics_summary(r) for name, r in results.items()},
                    roundtrip_max_diff=difference, campaign=campaign,
                    **({"framing_calibration": calibration} if calibration else {}))
    draw_curve(state, out_dir / CURVE_FILE)
    write_report(out_dir, results)
    log.info("shipped %s (epoch %d of %s) to %s", version, state.best_epoch, state.name, out_dir)
    return out_dir


def _finished_state(run_dir: Path) -> CampaignState:
    state = CampaignState.read(run_dir)
    if state.best_epoch is None:
        raise FileNotFoundError(f"{run_dir}: the campaign has not finished an epoch yet")
    return state


def average_of(networks: list[keras.Model]) -> keras.Model:
    """One network whose output is the mean of `networks`' probabilities (same input)."""
    inputs = keras.Input(shape=networks[0].input_shape[1:], name="face")
    # Each member is wrapped under its own name: two members of one architecture share layer names.
    outputs = [keras.Model(n.inputs, n.outputs[0], name=f"member_{i}")(inputs) for i, n in enumerate(networks)]
    return keras.Model(inputs, keras.layers.Average(name="probabilities")(outputs), name="ensemble")
