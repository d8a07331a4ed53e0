# Settings for the project's own targets (tests, examples, benchmarks): warnings are errors,
# dependencies are system headers (their warnings are not ours), -march as FLSL_MARCH says.
function(flsl_project_target target)
  target_compile_options(${target} PRIVATE
    $<$<COMPILE_LANGUAGE:CXX>:-Wall -Wextra -Werror>)
  # GCC 12 warns inside its own avx512fintrin.h when Eigen's AVX-512 kernels are inlined
  # and -Wuninitialized (GCC bug 105593, a false positive in the compiler's header).
  if(CMAKE_CXX_COMPILER_ID STREQUAL "GNU" AND CMAKE_CXX_COMPILER_VERSION VERSION_LESS 13)
    target_compile_options(${target} PRIVATE
      $<$<COMPILE_LANGUAGE:CXX>:-Wno-maybe-uninitialized -Wno-uninitialized>)
  endif()
  if(FLSL_MARCH)
    target_compile_options(${target} PRIVATE $<$<COMPILE_LANGUAGE:CXX>:-march=${FLSL_MARCH}>)
  endif()
  target_link_libraries(${target} PRIVATE flsl::flsl)
endfunction()

# A test executable's optimisation level: FLSL_TEST_OPTIMIZATION (CMakeLists.txt) after the build
# type's flags, for the host compiler and for nvcc's host side.
function(flsl_test_optimization target)
  if(FLSL_TEST_OPTIMIZATION)
    target_compile_options(${target} PRIVATE
      $<$<COMPILE_LANGUAGE:CXX>:${FLSL_TEST_OPTIMIZATION}>
      $<$<COMPILE_LANGUAGE:CUDA>:-Xcompiler=${FLSL_TEST_OPTIMIZATION}>)
  endif()
endfunction()

# flsl_add_test(NAME n LABELS l1 [l2...] SOURCES a.cpp [b.cpp...] [ARGS ...] [FULL_OPTIMIZATION])
# One doctest executable registered with CTest under the given labels, compiled at
# FLSL_TEST_OPTIMIZATION unless FULL_OPTIMIZATION keeps the build type's level.
function(flsl_add_test)
  cmake_parse_arguments(T "FULL_OPTIMIZATION" "NAME" "LABELS;SOURCES;ARGS" ${ARGN})
  add_executable(${T_NAME} ${T_SOURCES})
  flsl_project_target(${T_NAME})
  if(NOT T_FULL_OPTIMIZATION)
    flsl_test_optimization(${T_NAME})
  endif()
  target_link_libraries(${T_NAME} PRIVATE doctest::doctest flsl_doctest_main)
  add_test(NAME ${T_NAME} COMMAND ${T_NAME} ${T_ARGS})
  set_tests_properties(${T_NAME} PROPERTIES LABELS "${T_LABELS}")
endfunction()

# flsl_add_benchmark(NAME n SOURCES a.cpp [b.cpp...])
function(flsl_add_benchmark)
  cmake_parse_arguments(B "" "NAME" "SOURCES" ${ARGN})
  add_executable(${B_NAME} ${B_SOURCES})
  flsl_project_target(${B_NAME})
  target_link_libraries(${B_NAME} PRIVATE benchmark::benchmark)
endfunction()

# A target with CUDA sources (after flsl_project_target): links flsl::cuda; nvcc's warnings and the
# host compiler's are errors, as for the CUDA tests (tests/cuda/CMakeLists.txt).
function(flsl_cuda_target target)
  target_link_libraries(${target} PRIVATE flsl_cuda)
  target_compile_options(${target} PRIVATE
    $<$<COMPILE_LANGUAGE:CUDA>:-Werror=all-warnings -Xcompiler=-Wall,-Wextra,-Werror>)
  # GCC 12's -Wmaybe-uninitialized false positives through nvcc's host code (as for the tests)
  if(CMAKE_CXX_COMPILER_ID STREQUAL "GNU" AND CMAKE_CXX_COMPILER_VERSION VERSION_LESS 13)
    target_compile_options(${target} PRIVATE
      $<$<COMPILE_LANGUAGE:CUDA>:-Xcompiler=-Wno-maybe-uninitialized,-Wno-uninitialized>)
  endif()
endfunction()
