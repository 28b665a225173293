"""Objective voice-conversion quality: speaker similarity (CAM++), naturalness (DNSMOS), intelligibility
(pocketsphinx WER/CER) and pitch statistics. Every model used here ships inside an installed package;
nothing is downloaded."""
