"""Answers no surer than a guess: the calibrated factor, stored with the model, and the warning."""

from __future__ import annotations

import json

import numpy as np
import torch

from zoomloc.cli.main import main
from zoomloc.inference.confidence import FACTORS, calibrate_guess_factor, fit_temperature, guess_warning
from zoomloc.inference.localize import Localizer
from zoomloc.models.checkpoint import read_info

K2 = 16


def test_the_factor_is_the_largest_below_which_photos_do_no_better_than_a_guess():
    """Photos whose top first-step probability is below 0.1 (1.6 × uniform) are right 1 time in 16,
    the others 8 times in 10: the calibrated factor keeps every unsure photo below it, and the photos
    below it are right at most twice as often as a guess, which the next factor up would break."""
    rng = np.random.default_rng(0)
    top = np.concatenate([rng.uniform(1 / K2, 0.1, 4000), rng.uniform(0.1, 0.9, 4000)])
    right = np.concatenate([rng.random(4000) < 1 / K2, rng.random(4000) < 0.8])
    factor = calibrate_guess_factor(top, right, K2)
    assert factor >= 1.6
    assert right[top < factor / K2].mean() <= 2 / K2 < right[top < (factor + 0.1) / K2].mean()
    sure = top >= 0.1
    assert calibrate_guess_factor(top[sure], right[sure], K2) == 1.0  # no photo near uniform: only uniform itself
    assert calibrate_guess_factor(top[~sure], right[~sure], K2) == FACTORS[-1]  # every photo guesses


def test_the_warning_names_the_probability_and_the_guess():
    assert guess_warning(0.3, 1.6, K2) is None
    text = guess_warning(0.07, 1.6, K2)
    assert "no surer than a guess" in text and "0.07" in text and "0.062" in text and "1.6 ×" in text


def test_a_trained_model_stores_its_factor_and_localize_warns_below_it(trained_run, tiny_city, capsys):
    factor = read_info(trained_run)["val"]["guess_factor"]
    assert FACTORS[0] <= factor <= FACTORS[-1]
    loc = Localizer.load(trained_run, tiny_city / "pyramid.h5", progress=False)
    assert loc.guess_factor == factor
    photo = sorted((tiny_city / "streetview" / "images").glob("*.jpg"))[0]
    loc.guess_factor = float(K2)  # every answer's top probability lies below 16 × 1/16 = 1
    assert any("no surer than a guess" in w for w in loc.localize([photo])[0].warnings)
    loc.guess_factor = 1.0  # the top of 16 probabilities is never below 1/16
    assert loc.localize([photo])[0].warnings == ()

    assert main(["localize", str(photo), "--model", str(trained_run), "--city", str(tiny_city), "--json", "--quiet"]) == 0
    record = json.loads(capsys.readouterr().out)
    top = record["path"][0]["probability"]
    assert any("no surer than a guess" in w for w in record["warnings"]) == (top < factor / K2)


def test_the_temperature_fitted_is_the_one_the_answers_were_drawn_at():
    """Targets drawn from softmax(logits / 2.5) over 3 decisions of 16: the likelihood peaks at 2.5."""
    rng = np.random.default_rng(1)
    logits = torch.from_numpy(rng.normal(0, 4, (3000, 3, 16)))
    probs = (logits / 2.5).softmax(-1).numpy()
    targets = torch.from_numpy((probs.cumsum(-1) > rng.random((3000, 3, 1))).argmax(-1))
    assert abs(fit_temperature(logits, targets) - 2.5) < 0.2
    assert abs(fit_temperature(logits * 4, targets) - 10) < 0.8  # over-confident logits are softened as much


def test_a_trained_model_searches_at_its_fitted_temperature(trained_run, tiny_city):
    """The temperature is fitted at checkpoint selection; a search divides its logits by it, which
    changes the probabilities and not the greedy answer."""
    temperature = read_info(trained_run)["val"]["temperature"]
    loc = Localizer.load(trained_run, tiny_city / "pyramid.h5", progress=False)
    assert loc.index.temperature == temperature != 1.0
    photos = sorted((tiny_city / "streetview" / "images").glob("*.jpg"))[:8]
    street = loc.embed_photos(photos)
    fitted = loc.search(street, beam=1, topk=1)
    loc.index.temperature = 1.0
    plain = loc.search(street, beam=1, topk=1)
    assert all(torch.equal(a.paths, b.paths) for a, b in zip(fitted, plain))
    first = torch.stack([r.step_probs[0, 0] for r in fitted]), torch.stack([r.step_probs[0, 0] for r in plain])
    assert ((first[0] < first[1]) == (temperature > 1)).all()  # a softer (or sharper) first step
