"""The classifier: backbones, inference engines, feature cache, training, calibration, the probe
baseline, the OOD model and evaluation."""
