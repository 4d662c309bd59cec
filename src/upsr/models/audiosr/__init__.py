"""AudioSR (Liu et al., 2023): latent-diffusion audio super-resolution."""
