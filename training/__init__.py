"""The bundled demo model: its procedural shapes dataset, a classifier for it, training and scoring."""
