"""``pyro.render_model`` draws each model's generative story: its edges, read from
``pyro.infer.inspect.get_model_relations`` (what ``render_model`` draws), are the story's."""

from __future__ import annotations

import pytest
from pyro.infer.inspect import get_model_relations

from gallery import load
from gallery.models import factor_analysis, gmm, mfa, mppca, ppca, vae

STORIES = {  # model -> (sample -> sample parents, sample -> param parents)
    "gmm": ({"c": [], "x": ["c"]}, {"c": ["gmm.weights"], "x": ["gmm.loc", "gmm.scale_tril"]}),
    "factor-analysis": (
        {"z": [], "x": ["z"]},
        {"z": [], "x": ["factor_analysis.loc", "factor_analysis.loading", "factor_analysis.noise_variance"]},
    ),
    "ppca": ({"z": [], "x": ["z"]}, {"z": [], "x": ["ppca.loc", "ppca.loading", "ppca.noise_variance"]}),
    "vae": ({"z": [], "x": ["z"]}, {"z": []}),  # the decoder's weights are a pyro.module's
    **{
        module.PREFIX: (
            {"c": [], "z": [], "x": ["c", "z"]},  # c and z independent a priori, x | c, z
            {
                "c": [f"{module.PREFIX}.weights"],
                "z": [],
                "x": [f"{module.PREFIX}.{name}" for name in ("loc", "loading", "noise_variance")],
            },
        )
        for module in (mfa, mppca)
    },
}


@pytest.mark.parametrize("name", STORIES)
def test_the_drawn_graph_is_the_generative_story(name):
    data = load("iris").data
    model, kwargs = {
        "gmm": (gmm.model, {"num_components": 3}),
        "factor-analysis": (factor_analysis.model, {"latent_dim": 2}),
        "ppca": (ppca.model, {"latent_dim": 2}),
        "vae": (vae.model, {"decoder": vae.Decoder(4, 2, hidden=(8,))}),
        "mfa": (mfa.model, {"num_components": 3, "latent_dim": 2}),
        "mppca": (mppca.model, {"num_components": 3, "latent_dim": 2}),
    }[name]
    relations = get_model_relations(model, model_args=(data,), model_kwargs=kwargs)
    samples, params = STORIES[name]
    assert relations["sample_sample"] == samples
    for site, parents in params.items():  # z has no parameter parent: the prior is N(0, I)
        assert sorted(relations["sample_param"][site]) == sorted(parents)
