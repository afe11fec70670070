"""SFPC pharmaceutical-intervention problem codes (Interop'Santé code system).

The code system ``fr-pharmaceutical-intervention-problem-code`` of hl7.fhir.fr.medication (copy
in shared/data/fr-medication-ig/sfpc_pharmaceutical_intervention_codesystems/): the problem a
rule reports (``problem 6.3``), with its display exactly as the code system writes it. The rule
checker accepts these codes, the IR carries their displays and the FHIR export codes them.
"""

from __future__ import annotations

from typing import Final

__all__ = ["PROBLEM_DISPLAYS"]

PROBLEM_DISPLAYS: Final = {
    "1": "Non conformité aux référentiels / Contre-indication",
    "2": "Indication non traitée",
    "3": "Sous-dosage",
    "4": "Surdosage",
    "5": "Médicament non indiqué",
    "6.1": "Interaction - A prendre en compte",
    "6.2": "Interaction - Précaution d'emploi",
    "6.3": "Interaction - Association déconseillée",
    "6.4": "Interaction - Association contre-indiquée",
    "6.5": "Interaction - Publiée (=hors GTIAM de l'AFSSAPS)",
    "7": "Effet indésirable",
    "8": "Voie/administration inappropriée",
    "9": "Traitement non reçu",
    "10": "Monitorage à suivre",
}
