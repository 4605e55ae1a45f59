/* models/vit_config.c — the DINOv3 hub architectures and normalization presets (spec §1.2, §4.1). */
#include <string.h>

#include "model.h"

/* FFN hidden sizes follow spec §1.3 (swiglu: int(int(D*ratio)*2/3) rounded up to the alignment). */
static const dm_arch_preset presets[] = {
    { "vits16", 384, 12, 6, 1536, 0 },
    { "vits16plus", 384, 12, 6, 1536, 1 },
    { "vitb16", 768, 12, 12, 3072, 0 },
    { "vitl16", 1024, 24, 16, 4096, 0 },
    { "vitl16plus", 1024, 24, 16, 4096, 1 },
    { "vith16plus", 1280, 32, 20, 5120, 1 },
    { "vit7b16", 4096, 40, 32, 8192, 1 },
};

const dm_arch_preset *dm_arch_all(int *n)
{
    *n = (int)(sizeof presets / sizeof presets[0]);
    return presets;
}

const dm_arch_preset *dm_arch_find(const char *name)
{
    for (size_t i = 0; i < sizeof presets / sizeof presets[0]; i++)
        if (!strcmp(presets[i].name, name))
            return &presets[i];
    return NULL;
}

static const dm_norm norms[] = {
    { "sat", { 0.430f, 0.411f, 0.296f }, { 0.213f, 0.156f, 0.143f },
      "SAT-493M satellite backbones (ViT-L/16, ViT-7B/16)" },
    { "chm", { 0.420f, 0.411f, 0.296f }, { 0.213f, 0.156f, 0.143f }, "CHMv2 canopy height" },
    { "lvd", { 0.485f, 0.456f, 0.406f }, { 0.229f, 0.224f, 0.225f },
      "LVD-1689M web-image backbones (ImageNet statistics)" },
};

const dm_norm *dm_norm_all(int *n)
{
    *n = (int)(sizeof norms / sizeof norms[0]);
    return norms;
}

const dm_norm *dm_norm_get(const char *name)
{
    for (size_t i = 0; i < sizeof norms / sizeof norms[0]; i++)
        if (!strcmp(norms[i].name, name))
            return &norms[i];
    return NULL;
}
