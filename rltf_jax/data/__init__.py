"""Data layer: the patient-event dataset, vocabulary, cohorts, simulator and real-data readers."""

from rltf_jax.data.cohorts import COHORTS, Cohort, get_cohort
from rltf_jax.data.events import PatientEvents, assign_splits
from rltf_jax.data.vocab import Vocabulary
