# The install test, run by CTest as `cmake -P`: installs the flsl build tree FLSL_BUILD_DIR into
# WORK_DIR/prefix, then configures, builds and runs the outside project CONSUMER_SOURCE_DIR against
# it through find_package(flsl CONFIG REQUIRED) with CMAKE_PREFIX_PATH. Fails on any step.
foreach(var FLSL_BUILD_DIR CONSUMER_SOURCE_DIR WORK_DIR GENERATOR CXX_COMPILER)
  if(NOT DEFINED ${var})
    message(FATAL_ERROR "run_install_test.cmake: -D${var}=... is required")
  endif()
endforeach()

set(prefix ${WORK_DIR}/prefix)
set(build ${WORK_DIR}/consumer-build)
file(REMOVE_RECURSE ${WORK_DIR})

function(step name)
  execute_process(COMMAND ${ARGN} RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE out)
  if(NOT rc EQUAL 0)
    message(FATAL_ERROR "install test: ${name} failed (${rc}):\n${out}")
  endif()
  message(STATUS "install test: ${name}: ok")
  set(step_output "${out}" PARENT_SCOPE)
endfunction()

step("cmake --install" ${CMAKE_COMMAND} --install ${FLSL_BUILD_DIR} --prefix ${prefix})
if(NOT EXISTS ${prefix}/include/flsl/flsl.hpp)
  message(FATAL_ERROR "install test: ${prefix}/include/flsl/flsl.hpp was not installed")
endif()
file(GLOB_RECURSE config_file ${prefix}/*/flslConfig.cmake)
if(NOT config_file)
  message(FATAL_ERROR "install test: no flslConfig.cmake under ${prefix}")
endif()

# No optimisation flags: the consumer is small and compile time is what this test spends.
step("configure the consumer" ${CMAKE_COMMAND} -S ${CONSUMER_SOURCE_DIR} -B ${build}
  -G ${GENERATOR} -DCMAKE_CXX_COMPILER=${CXX_COMPILER} -DCMAKE_BUILD_TYPE=
  -DCMAKE_PREFIX_PATH=${prefix} -DCMAKE_FIND_PACKAGE_PREFER_CONFIG=ON)
# The consumer must have found the installed package, not a source or build tree.
file(STRINGS ${build}/CMakeCache.txt flsl_dir REGEX "^flsl_DIR:")
string(FIND "${flsl_dir}" "${prefix}" at)
if(at EQUAL -1)
  message(FATAL_ERROR "install test: the consumer found flsl at '${flsl_dir}', not under ${prefix}")
endif()
step("build the consumer" ${CMAKE_COMMAND} --build ${build})
step("run the consumer" ${build}/app)
message(STATUS "${step_output}")
file(REMOVE_RECURSE ${WORK_DIR})
