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

# Optional: OpenBLAS for sgemm (the GEMM entry point falls back to Eigen without it).
if(NOT DEFINED POLYFORMER_USE_OPENBLAS)
  set(POLYFORMER_USE_OPENBLAS ON)
endif()
if(POLYFORMER_USE_OPENBLAS AND NOT TARGET polyformer_openblas)
  find_path(POLYFORMER_OPENBLAS_INCLUDE_DIR cblas.h
            PATH_SUFFIXES x86_64-linux-gnu/openblas-pthread openblas-pthread openblas aarch64-linux-gnu/openblas-pthread)
  find_library(POLYFORMER_OPENBLAS_LIBRARY NAMES openblas)
  if(POLYFORMER_OPENBLAS_INCLUDE_DIR AND POLYFORMER_OPENBLAS_LIBRARY)
    add_library(polyformer_openblas INTERFACE IMPORTED)
    set_target_properties(polyformer_openblas PROPERTIES
      INTERFACE_INCLUDE_DIRECTORIES "${POLYFORMER_OPENBLAS_INCLUDE_DIR}"
      INTERFACE_LINK_LIBRARIES "${POLYFORMER_OPENBLAS_LIBRARY}"
      INTERFACE_COMPILE_DEFINITIONS "POLYFORMER_USE_OPENBLAS=1")
  endif()
endif()

# Threads: polyformer's own pool (core/parallel.hpp) runs on std::thread.
find_dependency(Threads)

# Adds the optional dependencies that were found to an interface target.
function(polyformer_link_optional_dependencies target)
  if(TARGET polyformer_openblas)
    target_link_libraries(${target} INTERFACE $<BUILD_INTERFACE:polyformer_openblas>)
  endif()
endfunction()
