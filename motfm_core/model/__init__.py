"""The generative model and its plan: how x_t and its target are made (`paths`), how noise and data are paired
(`couplings`), the velocity network (`nets`), the ODE solvers (`solvers`), the diffusion baseline (`baselines`), a
training step (`step`) and the training stage (`training`, data-parallel: `ddp`), conditioning masks (`masks`), the
sampler (`sampling`, fanned out over Dask: `distributed`) and its copy guard (`guard`), the autoencoder of latent flow
matching (`autoencoder`, `latents`), degraded-to-clean flows (`enhance`), checkpoints (`checkpoints`) and the memory
plan every stage that trains or samples calls first (`memory`).

The model reads the data wing's stores and never imports the evaluation.
"""
