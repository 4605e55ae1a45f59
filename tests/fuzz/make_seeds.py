#!/usr/bin/python3
"""tests/fuzz/make_seeds.py — writes the fuzz targets' seed corpora into tests/fuzz/seeds/<target>/
from the real test files (tests/data/golden, configs/) and small files built to the same formats
(torch.save's zip + pickle layout, safetensors, .npy). The run-folder seeds (tiles.gpkg, .dmseg)
come from the command line: tests/fuzz/make_seeds.sh. Run from the repository root; needs numpy
only (no torch: the pickles are written with stand-ins for torch's classes, which pickle by name)."""
import collections, glob, io, json, os, pickle, struct, sys, types, zipfile

import numpy as np

OUT = 'tests/fuzz/seeds'
GOLD = 'tests/data/golden'


def put(target, name, data):
    d = os.path.join(OUT, target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), 'wb') as f:
        f.write(data)


# --- stand-ins for torch's pickled names ---------------------------------------------------------
torch = types.ModuleType('torch')
tutils = types.ModuleType('torch._utils')
sys.modules['torch'] = torch
sys.modules['torch._utils'] = tutils
STORAGES = {'F32': 'FloatStorage', 'F64': 'DoubleStorage', 'F16': 'HalfStorage',
            'BF16': 'BFloat16Storage', 'I64': 'LongStorage', 'I32': 'IntStorage',
            'I16': 'ShortStorage', 'I8': 'CharStorage', 'U8': 'ByteStorage', 'BOOL': 'BoolStorage'}
DTYPES = {'F32': 'float32', 'BF16': 'bfloat16', 'F16': 'float16', 'I64': 'int64', 'U8': 'uint8'}
SIZE = {'F32': 4, 'F64': 8, 'F16': 2, 'BF16': 2, 'I64': 8, 'I32': 4, 'I16': 2, 'I8': 1, 'U8': 1,
        'BOOL': 1}


def named(mod, name, obj):
    obj.__module__ = mod.__name__
    obj.__qualname__ = name
    obj.__name__ = name
    setattr(mod, name, obj)
    return obj


for st in STORAGES.values():
    named(torch, st, type(st, (), {}))
for dt in DTYPES.values():
    named(torch, dt, type(dt, (), {}))
rebuild_v2 = named(tutils, '_rebuild_tensor_v2', lambda *a: None)
rebuild_v3 = named(tutils, '_rebuild_tensor_v3', lambda *a: None)
rebuild_param = named(tutils, '_rebuild_parameter', lambda *a: None)


class Storage:
    def __init__(self, key, dt, numel):
        self.key, self.dt, self.numel = key, dt, numel


class Tensor:
    def __init__(self, storage, shape, stride=None, offset=0, v3=False, param=False):
        if stride is None:
            stride, s = [], 1
            for d in reversed(shape):
                stride.insert(0, s)
                s *= d
        self.a = (storage, offset, tuple(shape), tuple(stride), False, collections.OrderedDict())
        self.v3, self.param = v3, param

    def __reduce__(self):
        if self.v3:
            inner = (rebuild_v3, self.a + (getattr(torch, DTYPES[self.a[0].dt]),))
        else:
            inner = (rebuild_v2, self.a)
        if self.param:
            return (rebuild_param, (Inner(inner), False, collections.OrderedDict()))
        return inner


class Inner:
    def __init__(self, r):
        self.r = r

    def __reduce__(self):
        return self.r


class Pickler(pickle.Pickler):
    def persistent_id(self, obj):
        if isinstance(obj, Storage):
            return ('storage', getattr(torch, STORAGES[obj.dt]), obj.key, 'cpu', obj.numel)
        return None


def dumps(obj, protocol=2):
    b = io.BytesIO()
    Pickler(b, protocol=protocol).dump(obj)
    return b.getvalue()


def pth(prefix, pkl, blobs, byteorder='little'):
    """A zip laid out as torch.save writes it: stored entries, <prefix>/data.pkl, data/<key>."""
    b = io.BytesIO()
    with zipfile.ZipFile(b, 'w', zipfile.ZIP_STORED) as z:
        z.writestr(prefix + '/data.pkl', pkl)
        if byteorder:
            z.writestr(prefix + '/byteorder', byteorder)
        for k, v in blobs.items():
            z.writestr(prefix + '/data/' + k, v)
        z.writestr(prefix + '/version', '3\n')
    return b.getvalue()


def state(specs, nest=False, v3=False, param=False):
    """specs: name -> (dtype, shape); one storage per tensor, filled with small values."""
    d, blobs = collections.OrderedDict(), {}
    for i, (name, (dt, shape)) in enumerate(specs.items()):
        n = int(np.prod(shape)) if shape else 1
        key = str(i)
        blobs[key] = bytes((j * 7 + i) & 0x3f for j in range(n * SIZE[dt]))
        d[name] = Tensor(Storage(key, dt, n), shape, v3=v3, param=param)
    return ({'model': d, 'epoch': 3} if nest else d), blobs


# --- pth and pickle ------------------------------------------------------------------------------
small = {'patch_embed.proj.weight': ('F32', [4, 3, 2, 2]), 'patch_embed.proj.bias': ('F32', [4]),
         'cls_token': ('F32', [1, 1, 4]), 'norm.weight': ('BF16', [4]), 'steps': ('I64', []),
         'mask': ('BOOL', [2, 2]), 'h': ('F16', [3]), 'q': ('I8', [5]), 'u': ('U8', [2, 3])}
cases = {
    'small_v2': state(small),
    'small_v3': state({k: v for k, v in small.items() if v[0] in DTYPES}, v3=True),
    'params': state(small, param=True),
    'nested': state({'conv.weight': ('F32', [3, 4, 1, 1]), 'conv.bias': ('F32', [3])}, nest=True),
}
for name, (obj, blobs) in cases.items():
    pk = dumps(obj)
    put('pth', name + '.pth', pth('archive', pk, blobs))
    put('pickle', name + '.pkl', pk)
obj, blobs = cases['small_v2']
put('pth', 'big_endian.pth', pth('weights', dumps(obj), blobs, 'big'))
put('pth', 'no_byteorder.pth', pth('m', dumps(obj), blobs, None))
put('pickle', 'small_v2_proto4.pkl', dumps(obj, 4))
# a tensor that views a shared storage with an offset and a transposed stride
s = Storage('0', 'F32', 12)
view = collections.OrderedDict(a=Tensor(s, [3, 4]), t=Tensor(s, [4, 3], [1, 4]),
                               tail=Tensor(s, [2], [1], 10))
put('pth', 'views.pth', pth('archive', dumps(view), {'0': bytes(48)}))
put('pickle', 'views.pkl', dumps(view))

# the real checkpoints' pickles, and the real pickle in a zip whose storages are cut short (the
# real storages make files of megabytes, too big to mutate quickly)
for f in sorted(glob.glob(GOLD + '/*/*.pth')):
    z = zipfile.ZipFile(f)
    pk = [n for n in z.namelist() if n.endswith('/data.pkl')][0]
    tag = f.split('/')[-2] + '_' + os.path.basename(f)[:-4]
    data = z.read(pk)
    put('pickle', tag + '.pkl', data)
    prefix = pk[:-len('/data.pkl')]
    keys = [n[len(prefix) + 6:] for n in z.namelist() if n.startswith(prefix + '/data/')]
    put('pth', tag + '_cut.pth', pth(prefix, data, {k: bytes(64) for k in keys}))

# --- safetensors ---------------------------------------------------------------------------------
def safetensors(tensors, metadata=None, pad=0):
    hdr, data = {}, b''
    if metadata is not None:
        hdr['__metadata__'] = metadata
    for name, (dt, shape) in tensors.items():
        n = int(np.prod(shape)) if shape else 1
        blob = bytes((j * 5) & 0x3f for j in range(n * SIZE[dt]))
        hdr[name] = {'dtype': dt, 'shape': shape, 'data_offsets': [len(data), len(data) + len(blob)]}
        data += blob
    h = json.dumps(hdr, separators=(',', ':')).encode() + b' ' * pad
    return struct.pack('<Q', len(h)) + h + data


st_small = {'embeddings.cls_token': ('F32', [1, 1, 4]), 'w': ('BF16', [2, 3]), 'h': ('F16', [3]),
            'd': ('F64', [2]), 'i': ('I64', [2]), 'j': ('I32', [1]), 'k': ('I16', [2]),
            'b': ('I8', [3]), 'u': ('U8', [2, 2]), 'm': ('BOOL', [4]), 'e': ('F32', [0, 3]),
            's': ('F32', [])}
put('safetensors', 'small.safetensors', safetensors(st_small, {'format': 'pt'}))
put('safetensors', 'padded.safetensors', safetensors({'a': ('F32', [2, 2])}, None, 6))
put('safetensors', 'empty_header.safetensors', struct.pack('<Q', 2) + b'{}')
# the real files' headers, each tensor shrunk to a few values (the real data is megabytes)
for f in sorted(glob.glob(GOLD + '/*/model.safetensors')):
    raw = open(f, 'rb').read()
    n = struct.unpack('<Q', raw[:8])[0]
    hdr = json.loads(raw[8:8 + n])
    meta = hdr.pop('__metadata__', None)
    shrunk = {k: (v['dtype'], [min(d, 2) for d in v['shape']]) for k, v in hdr.items()}
    put('safetensors', f.split('/')[-2] + '_shrunk.safetensors', safetensors(shrunk, meta))

# --- safetensors index (the shard files are made by the fuzz target itself) ----------------------
idx = {'metadata': {'total_size': 64},
       'weight_map': {'a.weight': 'model-00001-of-00002.safetensors',
                      'a.bias': 'model-00001-of-00002.safetensors',
                      'b.weight': 'model-00002-of-00002.safetensors'}}
put('safetensors_index', 'two_shards.json', json.dumps(idx, indent=2).encode())
put('safetensors_index', 'one_shard.json',
    json.dumps({'weight_map': {'x': 'model.safetensors'}}).encode())
put('safetensors_index', 'dup_tensor.json',
    json.dumps({'weight_map': {'a.weight': 'model-00001-of-00002.safetensors',
                               'c': 'dup.safetensors'}}).encode())

# --- seg heads: Meta's linear head as safetensors and as .pth (the .dmseg comes from the CLI) ----
lin = {'batchnorm_layer.weight': ('F32', [4]), 'batchnorm_layer.bias': ('F32', [4]),
       'batchnorm_layer.running_mean': ('F32', [4]), 'batchnorm_layer.running_var': ('F32', [4]),
       'conv.weight': ('F32', [3, 4, 1, 1]), 'conv.bias': ('F32', [3])}
put('seghead', 'linear.safetensors', safetensors(lin))
obj, blobs = state({'decode_head.' + k: v for k, v in lin.items()})
put('seghead', 'linear.pth', pth('archive', dumps(obj), blobs))
classes = [{'id': 1, 'name': 'water', 'color': '#1f78b4'}, {'id': 2, 'name': 'forest'},
           {'id': 7, 'name': 'urban', 'color': '#e31a1c'}]
md = {'format': 'dinomap-seg', 'version': '1', 'kind': 'logistic', 'classes': json.dumps(classes),
      'embed_dim': '4', 'backbone_sha256': '', 'arch': 'vitl16', 'layer': '-1', 'norm': 'sat',
      'info': '{}'}
put('seghead', 'small.dmseg', safetensors({'weight': ('F32', [3, 4]), 'bias': ('F32', [3])}, md))

# --- .npy ----------------------------------------------------------------------------------------
for f in sorted(glob.glob(GOLD + '/*/*.npy')):
    if os.path.getsize(f) <= 20000:
        put('npy', f.split('/')[-2] + '_' + os.path.basename(f), open(f, 'rb').read())


def npy(arr, version=(1, 0)):
    b = io.BytesIO()
    np.lib.format.write_array(b, arr, version=version)
    return b.getvalue()


put('npy', 'f8.npy', npy(np.linspace(0, 1, 6).reshape(2, 3)))
put('npy', 'u1.npy', npy(np.arange(12, dtype=np.uint8).reshape(3, 4)))
put('npy', 'scalar.npy', npy(np.float32(2.5)))
put('npy', 'empty.npy', npy(np.zeros((0, 3), np.float32)))
put('npy', 'v2.npy', npy(np.ones((2, 2), np.float32), (2, 0)))
put('npy', 'v3.npy', npy(np.ones((2, 2), np.float32), (3, 0)))
put('npy', 'fortran.npy', npy(np.asfortranarray(np.ones((2, 3), np.float32))))
put('npy', 'big_endian.npy', npy(np.ones(3, '>f4')))

# --- run configs: the shipped ones, and ones whose paths the fuzz target provides ---------------
for f in sorted(glob.glob('configs/*.ini')):
    put('ini', os.path.basename(f), open(f, 'rb').read())
put('ini', 'local.ini', b"""# paths the fuzz target creates beside the file
[run]
model = model.pth
input = in.tif
input = in*.tif
output = out
products = features,chm
tile = 512
halo = 32
bands = 3,2,1
aoi = aoi.geojson
co = COMPRESS=DEFLATE PREDICTOR=2
config = GDAL_CACHEMAX=64
precision = bf16
shard = 1/4
""")
put('ini', 'seg.ini', b"""model = model.pth
seg-head = head.dmseg
input = in.tif
output = out
products = seg
gsd = 10
crs = EPSG:32633
""")
print('seeds written to', OUT)
