@ECHO OFF
REM Build the documentation on Windows: make.bat html (warnings are errors; the gallery is executed).

pushd %~dp0
if "%SPHINXBUILD%" == "" set SPHINXBUILD=python -m sphinx
if "%SPHINXOPTS%" == "" set SPHINXOPTS=-W --keep-going
set HF_HUB_OFFLINE=1
set SOURCEDIR=.
set BUILDDIR=_build

if "%1" == "" goto help
%SPHINXBUILD% -M %1 %SOURCEDIR% %BUILDDIR% %SPHINXOPTS% %O%
goto end

:help
%SPHINXBUILD% -M help %SOURCEDIR% %BUILDDIR% %SPHINXOPTS% %O%

:end
popd
