"""`loraprep doctor`: what is wrong with a dataset, each problem with its files and its fix.

fingerprint  one reduced decode per image: perceptual hashes and sharpness numbers
compare      the careful same-picture check behind every near-duplicate
duplicates   candidates from the hashes, confirmed, grouped, the copy to keep chosen
sharpness    blurry / low-detail, judged against the dataset's own distribution
geometry     sizes against buckets: upscaling, trimming, bucket usage
captions     the caption lint plus identical captions and near-universal tags
findings     measurements → findings with their fixing commands
inputs       a folder or a manifest, read into one shape
check        `diagnose`: all of the above, one pass
report       the findings, the JSON document, the one-line summary
quarantine   `--apply` / `--restore`: journalled, reversible moves
sheet        `--sheet`: the problem images on a contact sheet
"""

from prep.doctor.check import diagnose
from prep.doctor.inputs import DoctorOptions
from prep.doctor.quarantine import QuarantineResult, RestoreResult, quarantine, restore_last, set_aside
from prep.doctor.report import QUARANTINE_KINDS, DoctorReport, Finding, summary_line

__all__ = ["QUARANTINE_KINDS", "DoctorOptions", "DoctorReport", "Finding", "QuarantineResult", "RestoreResult",
           "diagnose", "quarantine", "restore_last", "set_aside", "summary_line"]
