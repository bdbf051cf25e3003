"""What each simulated condition writes into a claims record: the simulator's code tables.

The numbers that shape *who* gets a condition and *when* (prevalences, hazard ratios, age curves,
coding probabilities) are configs/simulator.py. This module only says *which codes* a condition
emits, and how likely each is once the condition is coded:

  codes       the condition's own codes, one drawn per coded event by weight. For a cohort
              condition these are Table-4 target codes and nothing else; for any other condition
              they never include a target code (tests check both).
  presenting  (acute) the complaint that opens the episode's visit, drawn by weight.
  related     non-target codes that come with a coding, each independently with its probability
              (clinically related family codes, e.g. I2510 with AMI, D62 with GI bleeding).
  procedures  `CCSPX/<n>`: HCUP CCS procedure classes (1-231 from the ICD-9 single-level table;
              233 is "Laboratory - chemistry and hematology" of the CCS services-and-procedures
              extension), each with its probability.
  meds        `ATC/<code>`, each with its probability.
  followup    (acute) codes at later routine visits after an episode, each with its probability.
  pos         (acute) places of service of the episode's visit, by weight.

Diagnosis codes are ICD-10-CM without dots; every one outside Table 4 is a valid leaf code of the
`simple_icd_10_cm` release (tested). Table-4 codes from older releases (E780, T814XXA, ...) are
emitted as they are.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.metadata
import os
from pathlib import Path

import numpy as np

from rltf_jax import io as rltf_io
from rltf_jax.data.cohorts import COHORTS

Weights = tuple[tuple[str, float], ...]


@dataclasses.dataclass(frozen=True)
class ConditionCodes:
  codes: Weights
  presenting: Weights = ()
  related: Weights = ()
  procedures: Weights = ()
  meds: Weights = ()
  followup: Weights = ()
  pos: tuple[tuple[int, float], ...] = ((11, 1.0),)


def _w(spec: str) -> Weights:
  """'E119:0.8 E109:0.05' -> (("E119", 0.8), ("E109", 0.05))."""
  out = []
  for item in spec.split():
    code, w = item.rsplit(":", 1)
    out.append((code, float(w)))
  return tuple(out)


def _pos(spec: str) -> tuple[tuple[int, float], ...]:
  return tuple((int(c), w) for c, w in _w(spec))


# Conditions in generative order: a condition's risk factors are conditions listed before it.
# Prefixes: bare ICD-10-CM values here; `px` and `atc` are written with their system below.
CONDITIONS: dict[str, ConditionCodes] = {
    # ------------------------------------------------------------ chronic risk factors
    "obesity": ConditionCodes(codes=_w("E669:0.55 E6601:0.25 Z6841:0.1 Z6830:0.1")),
    "smoking": ConditionCodes(codes=_w("F17210:0.75 Z87891:0.25")),
    "alcohol": ConditionCodes(codes=_w("F1020:0.5 F1010:0.5"), meds=_w("ATC/N05BA01:0.05")),
    "asthma": ConditionCodes(codes=_w("J45909:0.6 J4530:0.2 J4520:0.2"),
                             meds=_w("ATC/R03AC02:0.45 ATC/R03BA02:0.25")),
    "depression": ConditionCodes(codes=_w("F329:0.6 F330:0.2 F410:0.2"),
                                 meds=_w("ATC/N06AB06:0.35 ATC/N06AB10:0.25"),
                                 procedures=_w("CCSPX/218:0.15")),
    "cancer": ConditionCodes(codes=_w("C189:0.2 C3490:0.2 C20:0.1 C679:0.15 C8590:0.15 C169:0.2"),
                             related=_w("Z5111:0.2"), procedures=_w("CCSPX/224:0.2 CCSPX/211:0.05"),
                             meds=_w("ATC/L01XA01:0.08")),
    # Sickle-cell disease. `scd` is the Table-4 cohort (coded D573); `sickle_other` are patients
    # with a sickle-cell genotype coded only with other D57 codes, so that the care pattern
    # (crises, hydroxyurea, transfusions) predicts the cohort without being a marker of it.
    "scd": ConditionCodes(codes=_w("D573:1"), related=_w("Z832:0.05"),
                          meds=_w("ATC/B03BB01:0.25 ATC/L01XX05:0.15")),
    "sickle_other": ConditionCodes(codes=_w("D571:0.6 D5740:0.2 D5720:0.2"),
                                   meds=_w("ATC/B03BB01:0.25 ATC/L01XX05:0.3")),
    "htn": ConditionCodes(codes=_w("I10:1"),
                          meds=_w("ATC/C09AA05:0.25 ATC/C08CA01:0.25 ATC/C03AA03:0.15 ATC/C09CA01:0.2")),
    "lipid": ConditionCodes(codes=_w("E785:0.55 E780:0.3 E782:0.1 E781:0.05"),
                            meds=_w("ATC/C10AA05:0.4 ATC/C10AA01:0.15"),
                            procedures=_w("CCSPX/233:0.25")),
    # Dyslipidaemia coded with current-release non-target codes (statins without the cohort).
    "dyslipidemia_other": ConditionCodes(codes=_w("E7849:0.6 E7800:0.3 E7841:0.1"),
                                         meds=_w("ATC/C10AA05:0.35 ATC/C10AA07:0.2"),
                                         procedures=_w("CCSPX/233:0.25")),
    "prediabetes": ConditionCodes(codes=_w("R7303:0.9 R739:0.1"), meds=_w("ATC/A10BA02:0.1"),
                                  procedures=_w("CCSPX/233:0.3")),
    "dm": ConditionCodes(
        codes=_w("E119:0.8 E109:0.05 R7309:0.05 R7301:0.04 R7302:0.02 E139:0.02 R81:0.01 Z9641:0.01"),
        related=_w("E1165:0.08 E1122:0.03 E1140:0.03 Z794:0.08 Z7984:0.12"),
        meds=_w("ATC/A10BA02:0.4 ATC/A10AE04:0.1 ATC/A10BJ02:0.04"),
        procedures=_w("CCSPX/233:0.35")),
    "ckd": ConditionCodes(codes=_w("N1830:0.4 N189:0.3 N184:0.15 N185:0.1 N186:0.05"),
                          procedures=_w("CCSPX/233:0.3 CCSPX/58:0.03")),
    "cad": ConditionCodes(codes=_w("I2510:0.8 I25119:0.1 I209:0.1"), related=_w("Z955:0.05"),
                          meds=_w("ATC/B01AC06:0.35 ATC/C07AB02:0.25 ATC/C10AA05:0.25"),
                          procedures=_w("CCSPX/202:0.1 CCSPX/201:0.04 CCSPX/47:0.01")),
    "copd": ConditionCodes(codes=_w("J449:0.7 J441:0.2 J439:0.1"),
                           meds=_w("ATC/R03BB04:0.3 ATC/R03AC02:0.3")),
    "hf": ConditionCodes(codes=_w("I509:0.4 I5022:0.2 I5032:0.2 I110:0.2"),
                         meds=_w("ATC/C03CA01:0.45 ATC/C07AB07:0.2 ATC/C03DA01:0.15"),
                         procedures=_w("CCSPX/193:0.08")),
    "vte": ConditionCodes(codes=_w("I82409:0.5 I2699:0.3 Z86718:0.2"),
                          meds=_w("ATC/B01AF02:0.4 ATC/B01AF01:0.3")),
    "dys": ConditionCodes(
        codes=_w("I4891:0.35 R002:0.15 R000:0.12 R001:0.08 I479:0.07 I471:0.05 I472:0.02 "
                 "I4892:0.05 I491:0.05 I4949:0.04 I499:0.02"),
        related=_w("Z7901:0.12"),
        meds=_w("ATC/B01AF02:0.2 ATC/C07AB02:0.2 ATC/C01BD01:0.03 ATC/B01AA03:0.04"),
        procedures=_w("CCSPX/202:0.25 CCSPX/203:0.08 CCSPX/225:0.02")),
    "cond": ConditionCodes(
        codes=_w("I447:0.12 I4510:0.12 I440:0.2 I441:0.05 I442:0.05 I4430:0.04 I4469:0.03 I452:0.02 "
                 "I454:0.02 I4581:0.03 I4589:0.02 I459:0.05 Z950:0.12 Z959:0.03 Z95810:0.03 "
                 "Z95818:0.01 Z45018:0.01 Z4502:0.01"),
        procedures=_w("CCSPX/202:0.25 CCSPX/48:0.03 CCSPX/203:0.05")),
    # ------------------------------------------------------------ acute episodes
    "surgery": ConditionCodes(
        codes=_w("CCSPX/152:0.25 CCSPX/153:0.15 CCSPX/84:0.2 CCSPX/85:0.15 CCSPX/124:0.1 CCSPX/158:0.1 "
                 "CCSPX/44:0.05"),
        presenting=_w("Z01818:1"), related=_w("M170:0.2 M1611:0.1 K8020:0.15 K4090:0.1 M48061:0.08"),
        procedures=_w("CCSPX/233:0.5"), meds=_w("ATC/N02AX02:0.3 ATC/J01DB01:0.2"),
        pos=_pos("21:0.5 22:0.3 24:0.2")),
    "screening": ConditionCodes(codes=_w("CCSPX/76:1"), presenting=_w("Z1211:1"),
                                related=_w("K635:0.2 K5730:0.1"), pos=_pos("24:0.6 22:0.4")),
    "uti": ConditionCodes(codes=_w("N390:1"), presenting=_w("R300:0.6 R350:0.4"),
                          procedures=_w("CCSPX/206:0.4"),
                          meds=_w("ATC/J01MA02:0.35 ATC/J01XE01:0.35 ATC/J01DB01:0.1"),
                          pos=_pos("11:0.7 20:0.2 23:0.1")),
    "uri": ConditionCodes(codes=_w("J069:0.5 J209:0.3 J0190:0.2"), presenting=_w("R059:0.6 R509:0.4"),
                          procedures=_w("CCSPX/183:0.08"),
                          meds=_w("ATC/J01CA04:0.3 ATC/J01FA10:0.15"), pos=_pos("11:0.8 20:0.2")),
    "chest_pain": ConditionCodes(codes=_w("R0789:0.5 R072:0.2 R079:0.3"), presenting=_w("R0602:1"),
                                 procedures=_w("CCSPX/202:0.8 CCSPX/201:0.3 CCSPX/193:0.2 CCSPX/47:0.1"),
                                 meds=_w("ATC/B01AC06:0.3"), pos=_pos("23:0.6 11:0.4")),
    "sickle_crisis": ConditionCodes(
        codes=_w("D5700:0.7 D5701:0.15 D57219:0.15"), presenting=_w("R52:0.7 R509:0.3"),
        procedures=_w("CCSPX/222:0.25"),
        meds=_w("ATC/N02AA01:0.6 ATC/L01XX05:0.3 ATC/J01DD04:0.1"), pos=_pos("23:0.8 21:0.2")),
    "tia": ConditionCodes(codes=_w("G459:1"), presenting=_w("R4701:0.5 R29810:0.5"),
                          procedures=_w("CCSPX/177:0.6 CCSPX/192:0.3"), meds=_w("ATC/B01AC06:0.5"),
                          pos=_pos("23:0.7 11:0.3")),
    "ami": ConditionCodes(
        codes=_w("I214:0.55 I2119:0.15 I2109:0.12 I2129:0.1 I213:0.08"),
        presenting=_w("R079:0.6 R0789:0.3 R0602:0.1"), related=_w("R7989:0.25 I2510:0.3"),
        procedures=_w("CCSPX/47:0.45 CCSPX/45:0.3 CCSPX/202:0.6 CCSPX/193:0.3"),
        meds=_w("ATC/B01AC04:0.4 ATC/B01AC06:0.45 ATC/C07AB02:0.3 ATC/C10AA05:0.35"),
        followup=_w("I252:0.15 I2510:0.2"), pos=_pos("23:0.3 21:0.7")),
    "pneu": ConditionCodes(
        codes=_w("J189:0.6 J181:0.08 J159:0.07 J129:0.06 J180:0.05 J168:0.03 J17:0.03 J158:0.04 J156:0.04"),
        presenting=_w("R509:0.4 R0602:0.3 R059:0.3"), related=_w("R0902:0.2"),
        procedures=_w("CCSPX/183:0.6 CCSPX/178:0.1 CCSPX/206:0.25"),
        meds=_w("ATC/J01DD04:0.35 ATC/J01FA10:0.45 ATC/J01MA12:0.2"), followup=_w("Z8701:0.08"),
        pos=_pos("23:0.4 11:0.3 21:0.3")),
    "sep": ConditionCodes(
        codes=_w("A419:0.7 A4151:0.08 A4101:0.05 A4150:0.04 A4189:0.04 R6520:0.07 R7881:0.02"),
        presenting=_w("R509:0.5 R4182:0.3 R0602:0.2"), related=_w("R6510:0.05 N390:0.2"),
        procedures=_w("CCSPX/206:0.6 CCSPX/54:0.2 CCSPX/222:0.1"),
        meds=_w("ATC/J01XA01:0.45 ATC/J01CR05:0.4 ATC/J01DH02:0.15"), pos=_pos("23:0.2 21:0.8")),
    "cvd": ConditionCodes(
        codes=_w("I6350:0.25 I6340:0.15 I6330:0.1 I63239:0.05 I619:0.12 I609:0.05 I629:0.05 "
                 "I6200:0.03 I669:0.1 I6789:0.1"),
        presenting=_w("R4701:0.4 R29810:0.4 R42:0.2"),
        procedures=_w("CCSPX/177:0.7 CCSPX/198:0.4 CCSPX/192:0.25 CCSPX/193:0.25"),
        meds=_w("ATC/B01AC06:0.45 ATC/B01AC04:0.25 ATC/C10AA05:0.35"),
        followup=_w("I69351:0.08 Z8673:0.15"), pos=_pos("23:0.3 21:0.7")),
    "gi_hem": ConditionCodes(
        codes=_w("K922:0.45 K921:0.2 K625:0.12 K920:0.1 K254:0.08 K228:0.05"),
        presenting=_w("R1013:0.4 R42:0.3 R55:0.3"), related=_w("D62:0.25 K219:0.1"),
        procedures=_w("CCSPX/70:0.5 CCSPX/76:0.3 CCSPX/222:0.25"), meds=_w("ATC/A02BC02:0.45"),
        pos=_pos("23:0.5 21:0.4 22:0.1")),
    "pleu": ConditionCodes(
        codes=_w("J9819:0.3 J918:0.2 J939:0.15 J942:0.05 J948:0.1 J869:0.05 R091:0.15"),
        presenting=_w("R0602:0.5 R071:0.5"), related=_w("J90:0.2"),
        procedures=_w("CCSPX/39:0.3 CCSPX/183:0.6 CCSPX/178:0.25"), pos=_pos("23:0.4 21:0.5 11:0.1")),
    "resp": ConditionCodes(
        codes=_w("J9600:0.25 J9690:0.15 J9620:0.1 J9610:0.15 J80:0.05 Z9981:0.25 Z9911:0.05"),
        presenting=_w("R0602:0.6 R0902:0.4"), related=_w("J9601:0.15"),
        procedures=_w("CCSPX/216:0.3 CCSPX/205:0.45 CCSPX/217:0.35"), pos=_pos("21:0.7 23:0.3")),
    "renal": ConditionCodes(
        codes=_w("N179:0.7 N170:0.05 N178:0.05 N19:0.2"), presenting=_w("R34:0.3 R5381:0.4 R1110:0.3"),
        related=_w("N189:0.1"), procedures=_w("CCSPX/233:0.5 CCSPX/195:0.25 CCSPX/58:0.08"),
        pos=_pos("21:0.6 23:0.2 11:0.2")),
    "shock": ConditionCodes(
        codes=_w("R579:0.3 R6521:0.4 R570:0.2 R578:0.1"), presenting=_w("I959:0.5 R55:0.25 R0902:0.25"),
        procedures=_w("CCSPX/216:0.4 CCSPX/54:0.35 CCSPX/205:0.35 CCSPX/204:0.05"),
        meds=_w("ATC/C01CA03:0.45 ATC/C01CA24:0.15 ATC/C01CA04:0.1"), pos=_pos("21:0.9 23:0.1")),
    "surg": ConditionCodes(
        codes=_w("T8189XA:0.15 T814XXA:0.15 T8130XA:0.05 T8131XA:0.05 K9189:0.05 I9789:0.05 "
                 "R5082:0.08 I9581:0.05 J95811:0.03 K912:0.03 K9423:0.03 T888XXA:0.05 T889XXS:0.02 "
                 "T82818A:0.05 I973:0.02 D6481:0.1 Z283:0.04"),
        presenting=_w("R509:0.4 R52:0.3 Z09:0.3"), related=_w("Y838:0.25"),
        procedures=_w("CCSPX/214:0.3 CCSPX/169:0.1 CCSPX/206:0.2"),
        meds=_w("ATC/J01DB01:0.25 ATC/J01XA01:0.1"), pos=_pos("23:0.4 21:0.4 11:0.2")),
    "fluid": ConditionCodes(
        codes=_w("E871:0.25 E876:0.22 E860:0.18 E872:0.05 E875:0.05 E869:0.06 E861:0.04 E870:0.03 "
                 "E873:0.02 E874:0.02 E8779:0.02 E878:0.03 T783XXA:0.03"),
        presenting=_w("R5383:0.4 R197:0.3 R1110:0.3"), procedures=_w("CCSPX/233:0.55"),
        meds=_w("ATC/A12BA01:0.25 ATC/B05BB01:0.15"), pos=_pos("81:0.3 11:0.4 23:0.2 21:0.1")),
}

CHRONIC = ("obesity", "smoking", "alcohol", "asthma", "depression", "cancer", "scd", "sickle_other",
           "htn", "lipid", "dyslipidemia_other", "prediabetes", "dm", "ckd", "cad", "copd", "hf",
           "vte", "dys", "cond")
ACUTE = tuple(c for c in CONDITIONS if c not in CHRONIC)

# Common diagnoses that head the background (noise) distribution, most frequent first; the tail
# is drawn from all other ICD-10-CM leaf codes (see `background_codes`).
BACKGROUND_HEAD = (
    "Z0000 J069 Z23 Z0001 M5450 K219 F419 E039 Z00129 R519 R109 M25561 J0190 E559 G4700 J029 "
    "H6690 L309 M1990 K5900 R42 R5383 Z1231 Z79899 D509 J309 G43909 B349 R21 H524 M25562 J329 "
    "H5213 J301 L989 M7910 M6281 R197 N400 N951 K5790 I8390 Z7189 R1110 R0789 M79604 R600 R202 "
    "L700 B351 F900 H1013 N930 R300 R0602 R059"
).split()

# Medications of everyday care, drawn at routine visits (most frequent first).
BACKGROUND_MEDS = (
    "ATC/N02BE01 ATC/M01AE01 ATC/J01CA04 ATC/R06AE07 ATC/A02BC01 ATC/H03AA01 ATC/H02AB07 "
    "ATC/N02AX02 ATC/N03AX12 ATC/R01AD09 ATC/A11CC05 ATC/G03AA07 ATC/M04AA01 ATC/N06AX05 "
    "ATC/D07AC01 ATC/S01ED01 ATC/N06BA04 ATC/R05DA04 ATC/A03FA01 ATC/A04AA01 ATC/J02AC01"
).split()

# Procedures of everyday care: (code, probability per routine visit).
ROUTINE_PROCEDURES = _w("CCSPX/233:0.18 CCSPX/228:0.06 CCSPX/202:0.03 CCSPX/183:0.02 "
                        "CCSPX/227:0.04 CCSPX/182:0.01 CCSPX/197:0.01")

# What a laboratory visit (place of service 81) records first.
LAB_REASON = "CCSPX/233"


def canonical(code: str) -> str:
  """Catalog spelling -> canonical code string: bare values are ICD-10-CM."""
  return code if "/" in code else f"ICD10CM/{code}"


# ---------------------------------------------------------------- tables derived from the catalog
@functools.lru_cache(maxsize=4)
def background_codes(tail_size: int, catalog_seed: int) -> tuple[str, ...]:
  """Background diagnoses, most frequent first: the catalog's head, then ICD-10-CM leaf codes.

  The tail leaves out chapters that need a context the simulator does not model (injuries and
  external causes S-Y, pregnancy O, perinatal P) and every 3-character family of a Table-4 code,
  so a background draw never lands in a cohort or next to one.
  """
  targets = {c.split("/", 1)[1] for co in COHORTS.values() for c in co.codes}
  families = {t[:3] for t in targets}
  head = [c for c in BACKGROUND_HEAD if c[:3] not in families]
  used = set(head) | {c for cc in CONDITIONS.values() for c, _ in cc.codes}
  pool = sorted(c for c in icd10cm_leaves()
                if c[0] not in "OPSTVWXY" and c[:3] not in families and c not in used)
  order = np.random.default_rng(catalog_seed).permutation(len(pool))[:tail_size]
  return tuple(head + [pool[i] for i in order])


def icd10cm_leaves() -> list[str]:
  """All leaf codes of the installed `simple_icd_10_cm` release, without dots.

  Importing the package parses its XML release (several seconds), so the list is kept in a cache
  file named after the package version (`$RLTF_CACHE`, else ~/.cache/rltf_jax).
  """
  version = importlib.metadata.version("simple_icd_10_cm")
  cache = Path(os.environ.get("RLTF_CACHE", Path.home() / ".cache" / "rltf_jax"))
  path = cache / f"icd10cm_leaves-{version}.txt"
  if path.exists():
    codes = path.read_text().split()
    if codes:
      return codes
  # Lazy: importing the package parses its XML release; the cache file usually spares that.
  import simple_icd_10_cm as icd  # pylint: disable=g-import-not-at-top
  codes = sorted(c for c in icd.get_all_codes(with_dots=False)
                 if len(c) >= 3 and "-" not in c and icd.is_leaf(c))
  try:
    rltf_io.atomic_write_text(path, "\n".join(codes) + "\n")
  except OSError:
    pass  # a read-only home only costs the parse next time
  return codes


@functools.lru_cache(maxsize=1)
def sporadic_pool() -> tuple[str, ...]:
  """Every non-target code the catalog's conditions emit (sorted, for a stable table)."""
  targets = {c for co in COHORTS.values() for c in co.codes}
  pool = set()
  for name, book in CONDITIONS.items():
    for field in ("codes", "presenting", "related", "procedures", "meds", "followup"):
      if field == "codes" and name in COHORTS:
        continue
      pool.update(canonical(c) for c, _ in getattr(book, field))
  # A sickle-cell code has no other indication.
  return tuple(sorted(c for c in pool - targets if not c.startswith("ICD10CM/D57")))
