"""The MIMIC-IV demo as another team's MEDS ETL writes it, tried as a new user would (issue 30's
"done when"): a sepsis cohort written as an ACES predicates file over the data's own code strings
(ICD-9 and ICD-10, with a derived predicate) runs through the pipeline and `synthesize`; its labels
equal a recount from the raw data; every synthetic code is a code of the source, in its spelling;
the same ACES file run by es-aces on the synthetic data labels as the synthetic dataset's own labels.
A JSON cohort with `map_icd9` shares the work directory (the base model is pretrained once)."""

import json
import re
import sys

import numpy as np
import pyarrow.parquet as pq
import pytest

from conftest import REPO, shared_path
import foreign_meds

sys.path.insert(0, str(REPO))
from rltf_jax.configs import base as base_config  # noqa: E402
from rltf_jax import pipeline, synthesize  # noqa: E402
from rltf_jax.reporting import experiment  # noqa: E402
from rltf_jax.data import cohorts, meds, mimic  # noqa: E402
from rltf_jax.data.events import assign_splits  # noqa: E402
from rltf_jax.data.source_codes import SourceCodes  # noqa: E402

# The MIMIC-IV MEDS ETL's spelling of each system (its prefixes; `codes.normalize_code` reads them).
_ETL = {"ICD10CM": "DIAGNOSIS//ICD//10//", "ICD9CM": "DIAGNOSIS//ICD//9//",
        "ICD10PCS": "PROCEDURE//ICD//10//", "ICD9PCS": "PROCEDURE//ICD//9//",
        "DRUG": "MEDICATION//START//"}

SEPSIS = """\
description: Sepsis (ICD-9-CM 038, 995.91, 995.92, 785.52; ICD-10-CM A40, A41, R65.2)
metadata: {predicate: sepsis, abbrev: Sepsis}
predicates:
  sepsis_icd9:
    code: {regex: "^DIAGNOSIS//ICD//9//(038.*|99591|99592|78552)$"}
  sepsis_icd10:
    code: {regex: "^DIAGNOSIS//ICD//10//(A40.*|A41.*|R652.*)$"}
  sepsis:
    expr: or(sepsis_icd9, sepsis_icd10)
"""


def _foreign_demo(out):
  """The demo's hosp tables as the MEDS ETL spells them, with its own train/tuning/held_out splits
  and neither a visit nor a place-of-service column."""
  ds = mimic.read_mimic(shared_path("data", "mimic-iv-demo-2.2"))
  ds = ds.with_splits(assign_splits(ds.subject_id, (0.6, 0.1, 0.3), 0))
  etl = SourceCodes({c: (_ETL[c.split("/", 1)[0]] + c.split("/", 1)[1],) for c in ds.codes},
                    columns={"visit": False, "place_of_service": False})
  return meds.write_meds(ds, out, source=etl)


def test_foreign_mimic_demo_aces_sepsis_through_pipeline_and_synthesize(tmp_path):
  source = _foreign_demo(tmp_path / "mimic_meds_etl")
  raw = foreign_meds.raw_codes(source)
  assert "DIAGNOSIS//ICD//10//A419" in raw and not any(c.startswith("ICD10CM/") for c in raw)
  aces_path = tmp_path / "sepsis.yaml"
  aces_path.write_text(SEPSIS)
  cfg = base_config.get_config("smoke")
  cfg.cohort, cfg.methods = str(aces_path), ("base", "rltf")
  cfg.data.source, cfg.data.path = "meds", str(source)
  cfg.eval.num_train_patients = cfg.eval.num_membership_patients = 20
  work = tmp_path / "work"
  assert experiment.run(cfg, str(work)) == 0

  # The labels equal a recount from the raw data.
  rx9 = re.compile(r"^DIAGNOSIS//ICD//9//(038.*|99591|99592|78552)$")
  rx10 = re.compile(r"^DIAGNOSIS//ICD//10//(A40.*|A41.*|R652.*)$")
  expected = foreign_meds.recount(source, lambda c: bool(rx9.search(c) or rx10.search(c)))
  labels = pq.read_table(work / "sepsis" / "labels" / "sepsis.parquet")
  got = {s for s, b in zip(labels.column("subject_id").to_pylist(),
                           labels.column("boolean_value").to_pylist()) if b}
  assert got == expected and len(expected) == 17 and labels.num_rows == 100
  saved = json.loads((work / "sepsis" / "cohort.json").read_text())
  assert saved["aces"]["members"] == 17 and saved["aces"]["disagree"] == 0
  report = (work / "sepsis" / "report" / "report.md").read_text()
  assert "Its labels are es-aces's: 17 patients with predicate `sepsis`" in report

  # No paper code in the vocabulary: every token is a code of the data.
  data_dir = pipeline.data_dir(cfg, work)
  vocab = json.loads((data_dir / "vocab.json").read_text())
  tokens = vocab["tokens"] if isinstance(vocab, dict) else vocab
  internal = set(json.loads((data_dir / "source_codes.json").read_text())["spellings"])
  assert {t for t in tokens if not t.startswith("<")} <= internal

  # Synthetic records in the source's words; the same ACES file labels them as their own labels do.
  definition = cohorts.read_definition(str(aces_path))
  for mode in ("patients", "continue"):
    out = synthesize.synthesize(work / "sepsis", "rltf", 12, mode, tmp_path / f"synthetic_{mode}")
    written = foreign_meds.raw_codes(out)
    assert written <= raw | {"GENDER//F", "GENDER//M", "MEDS_BIRTH"}, sorted(written - raw)[:5]
    schema = pq.read_schema(out / "data" / "0.parquet")
    assert "place_of_service" not in schema.names and "visit" not in schema.names
    own = pq.read_table(out / "labels" / "sepsis.parquet")
    back, _ = meds.read_meds(out)
    by_aces = cohorts.aces_members(definition, out, back.subject_id)
    assert np.array_equal(by_aces, own.column("boolean_value").to_numpy(zero_copy_only=False))
    # The card and provenance name the source and carry the cohort's definition (issue 30, 7).
    prov = json.loads((out / "metadata" / "dataset.json").read_text())["provenance"]
    assert prov["source_dataset"]["name"] == "mimic_meds_etl" and prov["source_dataset"]["version"] == "1"
    assert prov["cohort_definition"]["text"] == SEPSIS and "simulator" not in prov["config"]["data"]
    assert sum(prov["real_splits_used"]) == 100
    card = (out / "README.md").read_text()
    assert "MEDS dataset `mimic_meds_etl` version 1" in card and "sepsis_icd9:" in card
