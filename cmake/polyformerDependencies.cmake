# Finds polyformer's dependencies; used by the build tree and by the installed package config alike.
include(CMakeFindDependencyMacro)

find_dependency(Eigen3 3.3 NO_MODULE)
# Debian's xsimd 8.1 export links a bare `xtl` target without finding it: find it first, or stand in.
find_package(xtl QUIET)
if(NOT TARGET xtl)
  add_library(xtl INTERFACE IMPORTED)
endif()
find_dependency(xsimd)
find_dependency(nlohmann_json 3)

# Threads: polyformer's own pool (core/parallel.hpp) runs on std::thread.
find_dependency(Threads)
