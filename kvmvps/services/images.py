"""Building kvmvps's own guest images and registering them."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

from kvmvps import keys, validation
from kvmvps.errors import Conflict
from kvmvps.images import BuiltImage
from kvmvps.images.debian import build_debian_image
from kvmvps.images.tiny import build_tiny_image
from kvmvps.models import Image
from kvmvps.services import Context, audit, inventory


def _prepare(ctx: Context, name: str) -> str:
    name = validation.object_name(name, "image name")
    if any(i.name == name for i in inventory.list_images(ctx)):
        raise Conflict(f"an image named {name!r} already exists")
    return name


def _build(
    ctx: Context,
    name: str,
    builder: Callable[..., BuiltImage],
    progress: Callable[[str], None] | None,
    *,
    rescue: bool = False,
) -> Image:
    name = _prepare(ctx, name)
    pubkey = keys.ensure_provisioning_key(ctx.settings)
    built = builder(
        ctx.settings.images_dir / name,
        pubkey,
        cache_dir=ctx.settings.download_cache,
        progress=progress,
    )
    return inventory.register_built_image(ctx, name, built, rescue=rescue)


@audit.audits("image.build-tiny", target="name")
def build_tiny(
    ctx: Context,
    name: str,
    progress: Callable[[str], None] | None = None,
    *,
    actor: str | None = None,
) -> Image:
    """Build the tiny busybox+dropbear image and register it as ``name``, a rescue system."""
    return _build(ctx, name, build_tiny_image, progress, rescue=True)


@audit.audits("image.build-debian", target="name")
def build_debian(
    ctx: Context,
    name: str,
    progress: Callable[[str], None] | None = None,
    *,
    cloud_init: bool = False,
    actor: str | None = None,
) -> Image:
    """Build the Debian 12 image and register it as ``name``.

    cloud-init is installed either way; with ``cloud_init`` it runs at boot and
    each VPS gets a seed, otherwise it stays off and kvmvps reads the host key
    from the console, as for the tiny image (a boot about half a minute shorter
    under emulation).
    """
    return _build(ctx, name, partial(build_debian_image, cloud_init=cloud_init), progress)
