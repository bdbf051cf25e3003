"""HALO: visit layout, causality of the code-level head, sampling, overfitting, the Generator contract."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest
from flax import nnx

from rltf_jax import runs
from rltf_jax.data.cohorts import get_cohort
from rltf_jax.data.events import PatientEvents
from rltf_jax.data.vocab import Vocabulary
from rltf_jax.errors import ConfigError
from rltf_jax.generator import Generator
from rltf_jax.models.halo import HALO, HALOLayout
from rltf_jax.sampling.baseline_generators import HALOGenerator, sample_visit
from rltf_jax.training import baselines

from fit import fit


def test_layout_of_the_tiny_dataset(tiny_dataset):
  vocab = Vocabulary.build(tiny_dataset.select([0, 1, 2]).with_splits(np.zeros(3, np.int8)))
  lay = HALOLayout.build(vocab, get_cohort("scd").codes, max_codes=0, max_visits=5)
  assert lay.num_codes == 5 and lay.num_labels == 1 and lay.total == 5 + 1 + 3
  visits = lay.encode(tiny_dataset, vocab)
  x, mask = lay.dense(visits, np.arange(3))
  assert x.shape == (3, 5, 9) and mask.shape == (3, 4)
  h = lambda c: int(np.flatnonzero(lay.code_tokens == vocab.id(c))[0])
  # Patient 1: I10 D573 | CCSPX/47 D573 (D573 twice in the second visit's source? no: once each).
  p1 = x[1]
  assert p1[0, lay.start] == 1 and p1[0].sum() == 1
  assert p1[1, lay.num_codes] == 1 and p1[1].sum() == 1                     # label D573 set
  assert set(np.flatnonzero(p1[2])) == {h("ICD10CM/I10"), h("ICD10CM/D573")}
  assert set(np.flatnonzero(p1[3])) == {h("CCSPX/47"), h("ICD10CM/D573"), lay.end}  # last visit ends
  assert np.flatnonzero(p1[4]).tolist() == [lay.pad]
  np.testing.assert_array_equal(mask[1], [1, 1, 1, 0])                     # labels + 2 visits
  # Patient 0 has no label; patient 2 has no visits: its label visit carries the end bit.
  assert x[0, 1].sum() == 0
  assert np.flatnonzero(x[2, 1]).tolist() == [lay.end] and x[2, 2:, lay.pad].all()
  np.testing.assert_array_equal(mask[2], [1, 0, 0, 0])
  # Too many visits for the slots: the first ones are kept and no end bit is written.
  short = HALOLayout.build(vocab, get_cohort("scd").codes, 0, max_visits=3)
  v = short.encode(tiny_dataset, vocab)
  assert v.truncated.tolist() == [True, True, False]
  xs, _ = short.dense(v, np.arange(3))
  assert xs[1, 2, short.end] == 0 and h("ICD10CM/I10") in np.flatnonzero(xs[1, 2])
  # The prompts' view keeps the last visits.
  last = short.encode(tiny_dataset, vocab, keep="last")
  xl, _ = short.dense(last, np.arange(3), prompt=True)
  assert set(np.flatnonzero(xl[1, 2])) == {h("CCSPX/47"), h("ICD10CM/D573")}


def test_code_head_never_sees_code_k_or_later():
  v, d = 10, 8
  model = HALO(v, d, 1, 2, 4, rngs=nnx.Rngs(0))
  graphdef, state = nnx.split(model)
  logits = jax.jit(lambda s, h, x: nnx.merge(graphdef, s).code_logits(h, x))
  jacobian = jax.jit(jax.jacobian(lambda s, h, x: nnx.merge(graphdef, s).code_logits(h, x), 2))
  hist = jax.random.normal(jax.random.key(1), (d,))
  visit = (jax.random.uniform(jax.random.key(2), (v,)) < 0.5).astype(jnp.float32)
  jac = np.asarray(jacobian(state, hist, visit))                 # [k, j] = d logit_k / d x_j
  later = np.arange(v)[None, :] >= np.arange(v)[:, None]
  assert np.all(jac[later] == 0.0)
  # The same by perturbation: flipping codes k.. leaves logit k exactly unchanged.
  flips = jnp.where(later, 1.0 - visit[None, :], visit[None, :])  # row k: codes k.. flipped
  np.testing.assert_array_equal(np.diag(np.asarray(logits(state, hist[None].repeat(v, 0), flips))),
                                np.asarray(logits(state, hist, visit)))
  # Earlier codes do count. Code j reaches logit k through only k - j hidden units, which the ReLU
  # may switch off, so check with every unit on (a large first bias).
  state["head1"]["bias"].value = jnp.full(d + v, 100.0)
  jac_on = np.asarray(jacobian(state, hist, visit))
  assert np.all(jac_on[~later] != 0) and np.all(jac_on[later] == 0)
  jac_h = jax.jit(jax.jacobian(lambda s, h, x: nnx.merge(graphdef, s).code_logits(h, x), 1))
  assert np.all(np.abs(np.asarray(jac_h(state, hist, visit))).sum(1) > 0)  # every code sees history
  # Shapes of the teacher-forced pass.
  x = jnp.zeros((3, 4, v))
  assert model(x).shape == (3, 3, v) and model.history(x).shape == (3, 4, d)


def test_sample_visit_respects_allowed_and_forced_bits():
  v, d = 12, 8
  model = HALO(v, d, 1, 2, 4, rngs=nnx.Rngs(0))
  h = jnp.zeros((4, d))
  allowed = jnp.arange(v) < 6
  forced = jnp.zeros((4, v), bool).at[:, 9].set(True)
  for bias, want in ((1e4, set(range(6)) | {9}), (-1e4, {9})):
    model.head2.bias.value = jnp.full(d + v, bias)
    out = np.asarray(sample_visit(model, h, forced, allowed, jax.random.key(0)))
    for row in out:
      assert set(np.flatnonzero(row)) == want


def _patients(visits_per_patient, codes):
  """Each patient a list of visits (lists of code indices), 30 days apart, office visits."""
  code, visit, lens = [], [], []
  for pv in visits_per_patient:
    n = 0
    for j, vis in enumerate(pv):
      code += vis
      visit += [j] * len(vis)
      n += len(vis)
    lens.append(n)
  p = len(visits_per_patient)
  visit = np.asarray(visit)
  return PatientEvents.build(
      subject_id=np.arange(p), sex=np.zeros(p), birth_day=np.zeros(p),
      offsets=np.concatenate([[0], np.cumsum(lens)]), code=code, day=10000 + 30 * visit,
      visit=visit, pos=np.full(len(visit), 21), codes=codes)


CODES = ["ICD10CM/D573", "ICD10CM/E119", "ICD10CM/I10", "CCSPX/47", "ATC/A10BA02", "ICD10CM/J189"]
VISITS = [[[1, 2], [4], [1, 4]], [[3, 5], [0, 3], [0]], [[2], [2, 5], [5, 1]]]


def _cfg(**kw):
  c = dict(num_layers=1, width=32, num_heads=2, max_visits=6, max_codes=0, learning_rate=1e-2,
           batch_size=4, epochs=2, label_mode="prompt", seed=0)
  c.update(kw)
  return ml_collections.ConfigDict(dict(halo=c))


def test_tiny_halo_overfits_and_completes_its_patients():
  ds = _patients(VISITS, CODES)
  # Labels that no patient has (shock codes), so that the prompts' labels are the training labels.
  vocab = Vocabulary.build(ds, always_include=get_cohort("shock").codes)
  lay = HALOLayout.build(vocab, get_cohort("shock").codes, 0, max_visits=6)
  x, mask = (jnp.asarray(a) for a in lay.dense(lay.encode(ds, vocab), np.arange(3)))
  model = HALO(lay.total, 32, 1, 2, 6, rngs=nnx.Rngs(0))
  graphdef, params = nnx.split(model)
  params, _, loss = fit(lambda p: baselines.halo_loss(nnx.merge(graphdef, p), (x, mask))[0], params,
                       optax.adam(1e-2), 300)
  # Left: which of the 3 first visits comes (ln 3 nats per patient) over 3 x 4 visit rows x V bits.
  floor = 3 * np.log(3) / (12 * lay.total)
  assert float(loss) < floor + 0.004
  attrs = dict(gaps=np.array([30]), pos=np.array([11]), first_age_days=np.array([3650]),
               events_per_visit=np.float64(2.0))
  gen = HALOGenerator(nnx.merge(graphdef, params), lay, vocab, attrs, label_mode="prompt",
                      batch_size=4)
  # The first visit identifies the patient; HALO must sample the other two visits and stop.
  prompts = _patients([v[:1] for v in VISITS], CODES)
  out = gen.complete(prompts, max_new_events=10, seed=0)
  for i, pv in enumerate(VISITS):
    p = out.patient(i)
    got = [sorted(p["code"][p["visit"] == j]) for j in (1, 2)]
    assert got == [sorted(CODES[c] for c in vis) for vis in pv[1:]], (i, p)
    assert len(p["code"]) == sum(len(v) for v in pv[1:])
    np.testing.assert_array_equal(p["day"], 10000 + 30 * p["visit"])
    assert np.all(p["pos"] == 21)
  ll = gen.log_likelihood(ds)
  assert ll.dtype == np.float64 and np.all(ll < 0)
  np.testing.assert_allclose(ll, -np.log(3), atol=0.4)
  # Its tokens are visits: the label visit and each of the record's visits.
  same, scored = gen.scored_log_likelihood(ds)
  np.testing.assert_array_equal(same, ll)
  visits = [len(np.unique(ds.patient(i)["visit"])) for i in range(ds.num_patients)]
  assert scored.dtype == np.int64 and list(scored) == [v + 1 for v in visits]
  # The log-likelihood is the (negated, unnormalised) training loss.
  loss, n = baselines.halo_loss(nnx.merge(graphdef, params), (x, mask))
  np.testing.assert_allclose(-ll.sum(), float(loss) * float(n) * lay.total, rtol=1e-4)


def test_train_generate_and_contract(tmp_path):
  ds = _patients(VISITS * 4, CODES)
  vocab = Vocabulary.build(ds)
  ck = baselines.train_halo(_cfg(label_mode="sample"), ds, vocab, get_cohort("scd"), tmp_path / "halo")
  assert runs.is_done(ck) and (ck / "layout.npz").exists()
  with pytest.raises(ConfigError, match="other data or settings"):
    baselines.train_halo(_cfg(width=16), ds, vocab, get_cohort("scd"), ck)
  gen = HALOGenerator.load(ck, batch_size=8)
  assert isinstance(gen, Generator) and gen.label_mode == "sample"
  prompts = ds.select(np.arange(6))
  out = gen.complete(prompts, max_new_events=3, seed=0)
  again = gen.complete(prompts, max_new_events=3, seed=0)
  assert out.equals(again)                                  # a seed fixes the sample
  assert np.array_equal(out.subject_id, prompts.subject_id) and np.all(out.lengths <= 3)
  last_visit = prompts.visit[prompts.offsets[1:] - 1]
  for i in range(6):
    p = out.patient(i)
    if len(p["code"]):
      assert p["visit"].min() == last_visit[i] + 1 and set(p["code"]) <= set(CODES)
  with pytest.raises(ConfigError):
    HALOGenerator.load(ck, label_mode="oracle")
