"""Drop-in replacements for functions of other GAN code bases, under their own names and
conventions (defaults, argument order), so a swap is one import line. Each module names the
tool it replaces; gankern's own API keeps gankern's conventions."""
