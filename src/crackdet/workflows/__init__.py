"""What a stage or a command does end to end: read its inputs, call the library, write its outputs
and log them to MLflow. Stages (crackdet.stages) and commands (crackdet.cli) are thin callers."""
