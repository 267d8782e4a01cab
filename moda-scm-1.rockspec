package = "moda"
version = "scm-1"
source = { url = "git+file://." }
description = {
  summary = "Mixture-of-Depths Attention (MoDA): C core, CUDA kernels, LuaJIT nn-style API",
  license = "MIT",
}
dependencies = { "lua >= 5.1" }   -- LuaJIT (the FFI) is required at run time
build = {
  type = "make",
  install_variables = { LUADIR = "$(LUADIR)", LIBDIR = "$(LIBDIR)" },
}
