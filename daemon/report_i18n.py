"""Wording of `douane report` in French (the first user: a French hospital DPO) and English."""

from __future__ import annotations

LANGUAGES = ("fr", "en")

TEXT: dict[str, dict[str, str]] = {
    "fr": {
        "title": "Registre des transferts hors juridiction UE",
        "period": "Période du {since} au {until} (UTC), comparée au {previous_since} – {previous_until}",
        "generated": "Établi le {now} par douane {version} à partir de {store}",
        "summary": "En bref",
        "sensitive_out": "{volume} de {data} sont sortis de la juridiction UE en {flows} flux",
        "to_whom": "vers {who}",
        "trend_up": "en hausse de {pct} par rapport à la période précédente ({prev})",
        "trend_down": "en baisse de {pct} par rapport à la période précédente ({prev})",
        "trend_same": "stable par rapport à la période précédente",
        "trend_new": "rien lors de la période précédente",
        "nothing": "Aucun envoi de {data} hors juridiction UE sur la période",
        "totals": "{flows} flux signalés au total ({volume} envoyés), dont {critical} critiques "
        "et {warning} avertissements ; {exceptions} flux couverts par une exception",
        "empty": "Aucun flux signalé sur la période.",
        "charts": "Graphiques",
        "chart_time": "Volume envoyé par jour et par juridiction",
        "chart_provider": "Part du volume envoyé par fournisseur",
        "chart_country": "Volume envoyé par pays d'hébergement",
        "register": "Registre",
        "register_note": "Une ligne par fournisseur, service, juridiction, catégorie de données et zone. "
        "Le volume est celui des octets envoyés (et reçus).",
        "facts": "Les fournisseurs : faits et sources",
        "method": "Méthode",
        "method_text": "Source : le registre de preuves de douane (flux signalés par la politique, "
        "verdict autre que « autorisé »). Une donnée sort de la juridiction UE quand la juridiction du "
        "flux n'est pas « eu » : le lieu d'hébergement ou le contrôleur est hors de l'UE/EEE ou d'un pays "
        "adéquat, ou une loi extraterritoriale atteint le contrôleur ; « unknown » compte comme hors UE. "
        "Le volume est celui des octets envoyés par le réseau interne. Un flux porteur de deux catégories "
        "de données figure dans la ligne de chacune. La période précédente a la même durée et précède "
        "immédiatement la période du rapport. Heures en UTC.",
        "provider": "Fournisseur",
        "service": "Service",
        "jurisdiction": "Juridiction",
        "category": "Catégorie",
        "zone": "Zone",
        "volume_out": "Envoyé",
        "volume_in": "Reçu",
        "flows": "Flux",
        "first_seen": "Première fois",
        "last_seen": "Dernière fois",
        "verdict": "Verdict",
        "rule": "Règle",
        "exception": "Exception",
        "expired": "expirée",
        "expires": "expire le",
        "countries": "Pays d'hébergement",
        "controller_country": "Pays du contrôleur",
        "exposure": "Lois extraterritoriales",
        "certifications": "HDS / SecNumCloud",
        "dpf": "Data Privacy Framework",
        "dpf_yes": "certifié",
        "dpf_no": "non certifié",
        "sources": "Sources",
        "none": "aucune",
        "unregistered": "hors registre (pays du contrôleur estimé)",
        "data_health": "données de santé",
        "data_school": "données scolaires",
        "health": "santé",
        "school": "scolaire",
        "personal": "personnelle",
        "uncategorised": "sans catégorie",
        "critical": "critique",
        "warning": "avertissement",
        "notice": "à noter",
        "and": "et",
        "others": "autres",
        "sampled": "{flows} de ces flux viennent d'enregistrements de flux échantillonnés (un paquet "
        "compté sur N) : leurs volumes sont des estimations, marquées ≈ dans le registre.",
        "sampled_legend": "≈ : le volume comprend des estimations, tirées d'enregistrements de flux "
        "échantillonnés (paquets et octets comptés un sur N, puis multipliés par N).",
    },
    "en": {
        "title": "Register of transfers outside EU jurisdiction",
        "period": "Period {since} to {until} (UTC), compared with {previous_since} – {previous_until}",
        "generated": "Made on {now} by douane {version} from {store}",
        "summary": "In short",
        "sensitive_out": "{volume} of {data} left EU jurisdiction in {flows} flows",
        "to_whom": "to {who}",
        "trend_up": "up {pct} on the previous period ({prev})",
        "trend_down": "down {pct} on the previous period ({prev})",
        "trend_same": "the same as the previous period",
        "trend_new": "none in the previous period",
        "nothing": "No {data} left EU jurisdiction in the period",
        "totals": "{flows} flagged flows in all ({volume} sent), {critical} critical and {warning} "
        "warnings; {exceptions} flows covered by an exception",
        "empty": "No flagged flow in the period.",
        "charts": "Charts",
        "chart_time": "Volume sent per day, by jurisdiction",
        "chart_provider": "Share of the volume sent, by provider",
        "chart_country": "Volume sent, by hosting country",
        "register": "Register",
        "register_note": "One row per provider, service, jurisdiction, data category and zone. "
        "Volume is bytes sent (and received).",
        "facts": "The providers: facts and sources",
        "method": "Method",
        "method_text": "Source: douane's evidence store (flows flagged by the policy, any verdict but "
        "allowed). Data leaves EU jurisdiction when the flow's jurisdiction is not eu: the server's "
        "location or the controller is outside the EU/EEA and adequate countries, or an extraterritorial "
        "law reaches the controller; unknown counts as outside. Volume is the bytes sent by the internal "
        "network. A flow carrying two data categories is in the row of each. The previous period has the "
        "same length and ends where the report's begins. Times are UTC.",
        "provider": "Provider",
        "service": "Service",
        "jurisdiction": "Jurisdiction",
        "category": "Category",
        "zone": "Zone",
        "volume_out": "Sent",
        "volume_in": "Received",
        "flows": "Flows",
        "first_seen": "First seen",
        "last_seen": "Last seen",
        "verdict": "Verdict",
        "rule": "Rule",
        "exception": "Exception",
        "expired": "expired",
        "expires": "expires",
        "countries": "Hosting countries",
        "controller_country": "Controller country",
        "exposure": "Extraterritorial laws",
        "certifications": "HDS / SecNumCloud",
        "dpf": "Data Privacy Framework",
        "dpf_yes": "certified",
        "dpf_no": "not certified",
        "sources": "Sources",
        "none": "none",
        "unregistered": "not in the registry (controller country guessed)",
        "data_health": "health data",
        "data_school": "school data",
        "health": "health",
        "school": "school",
        "personal": "personal",
        "uncategorised": "no category",
        "critical": "critical",
        "warning": "warning",
        "notice": "notice",
        "and": "and",
        "others": "others",
        "sampled": "{flows} of these flows come from sampled flow records (one packet counted in N): "
        "their volumes are estimates, marked ≈ in the register.",
        "sampled_legend": "≈: the volume includes estimates from sampled flow records (packets and "
        "bytes counted one in N, then multiplied by N).",
    },
}

# Units: French writes octets (ko, Mo, Go) with a decimal comma.
UNITS = {"fr": ("o", "ko", "Mo", "Go", "To"), "en": ("B", "kB", "MB", "GB", "TB")}
