# cmake --install: headers, the flsl::flsl target and a package config that re-finds the
# dependencies, so that an outside project does find_package(flsl CONFIG REQUIRED).
include(GNUInstallDirs)
include(CMakePackageConfigHelpers)
install(DIRECTORY include/flsl DESTINATION ${CMAKE_INSTALL_INCLUDEDIR})
install(TARGETS flsl EXPORT flslTargets)
install(EXPORT flslTargets NAMESPACE flsl:: DESTINATION ${CMAKE_INSTALL_LIBDIR}/cmake/flsl)
configure_package_config_file(cmake/flslConfig.cmake.in
  ${CMAKE_CURRENT_BINARY_DIR}/flslConfig.cmake
  INSTALL_DESTINATION ${CMAKE_INSTALL_LIBDIR}/cmake/flsl)
write_basic_package_version_file(${CMAKE_CURRENT_BINARY_DIR}/flslConfigVersion.cmake
  COMPATIBILITY SameMinorVersion ARCH_INDEPENDENT)
install(FILES ${CMAKE_CURRENT_BINARY_DIR}/flslConfig.cmake
  ${CMAKE_CURRENT_BINARY_DIR}/flslConfigVersion.cmake
  cmake/flslDependencies.cmake
  DESTINATION ${CMAKE_INSTALL_LIBDIR}/cmake/flsl)
