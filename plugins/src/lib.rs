//! The plugins' logic; each binary in `src/bin/` is a thin `main` over one module.
