"""Library code shared by the services and the trainer. Never imports TensorFlow."""
